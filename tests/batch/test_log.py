"""Library logs go through the job's own JSON pipeline (stdout, `run_id`), never plain text on
stderr: e.g. psycopg's "error ignored terminating <Pipeline>" warning during a database outage
used to reach stderr through Python's last-resort handler and break the one-line error rule."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

SCRIPT = """
import logging, structlog
from batch.log import configure_logging
configure_logging("json", "INFO")
configure_logging("json", "INFO")  # configured twice (workers, tests): still one line per record
structlog.contextvars.bind_contextvars(run_id="run-1")
logging.getLogger("psycopg").warning("error ignored terminating %s: the connection is lost", "<Pipeline>")
logging.getLogger("alembic.runtime.migration").info("below WARNING: not shown")
"""


def test_a_library_warning_is_one_json_line_on_stdout_with_the_run_id() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    event = json.loads(lines[0])
    assert event["event"] == "error ignored terminating <Pipeline>: the connection is lost"
    assert (event["run_id"], event["logger"], event["level"]) == ("run-1", "psycopg", "warning")
