"""Cron entry point (railway.json, SPEC §10): the daily job exactly as `sigmasight-batch run`,
recorded with trigger `cron`. Extra arguments are passed through (e.g. `--json`)."""

import sys

from batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--trigger", "cron", *sys.argv[1:]]))
