"""Cron entry point (railway.json, SPEC §10): the daily job exactly as `sigmasight-batch run`,
recorded with trigger `cron`, with the summary as JSON (`--json`) so stdout is JSON lines only.
Extra arguments are passed through. Runs from a plain checkout too: the checkout this file
belongs to is put first on the import path, so `python scripts/daily_batch.py` needs no install
(the dependencies must still be importable)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch.cli import main  # noqa: E402 - after the path set-up above

if __name__ == "__main__":
    sys.exit(main(["run", "--trigger", "cron", "--json", *sys.argv[1:]]))
