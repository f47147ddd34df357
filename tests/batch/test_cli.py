"""The command line itself (SPEC §2, issue #10): usage errors, help, read-only commands and
database URLs, through the real entry point `batch.cli.main` (exit code, output, files left)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from batch import cli
from tests.conftest import POSTGRES_URL


@pytest.fixture
def cli_in(monkeypatch, tmp_path, capsys):
    """`main` run in an empty working directory with no DATABASE_URL (the embedded default):
    `call(*args, **env)` returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "MARKET_DATA_PROVIDER", "FMP_API_KEY", "POLYGON_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOG_FORMAT", "json")

    def call(*args: str, **env: str) -> tuple[int, str, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- item 6: typos, help, version, --limit -------------------------------------------------------

def test_a_mistyped_command_names_the_close_command_under_the_top_level_usage(cli_in):
    code, out, err = cli_in("histroy")
    assert code == 2 and out == ""
    assert "unknown command 'histroy'" in err and "'history'" in err
    assert "unrecognized arguments" not in err
    assert err.startswith("usage: sigmasight-batch [-h] [--version]")


def test_a_mistyped_option_names_the_close_option_under_the_run_usage(cli_in):
    code, _, err = cli_in("--dates", "2022-12-28")
    assert code == 2
    usage, message = err.split("sigmasight-batch run: error: ")
    assert usage.startswith("usage: sigmasight-batch run") and "--date YYYY-MM-DD" in usage
    assert message.strip() == "unrecognized arguments: --dates 2022-12-28 (did you mean --date?)"


def test_help_lists_the_commands_the_run_options_and_the_exit_codes(cli_in):
    code, out, _ = cli_in("--help")
    assert code == 0
    for word in ("init-db", "seed-demo", "check", "history", "--date", "--start", "--end", "--force",
                 "--portfolio", "--skip-sync", "--skip-profiles", "--json", "--workers", "--chunk-size", "--executor",
                 "--version", "exit codes:"):
        assert word in out, word
    codes = out.split("exit codes:")[1].split()
    assert {"0", "1", "2", "75", "130/143"} <= set(codes)


def test_version_prints_the_installed_distribution_version(cli_in):
    code, out, _ = cli_in("--version")
    assert code == 0
    assert out.strip() == f"sigmasight-batch {importlib.metadata.version('sigmasight-batch')}"


@pytest.mark.parametrize("limit", ["-1", "0", "ten"])
def test_history_limit_must_be_a_positive_integer(cli_in, tmp_path, limit):
    code, out, err = cli_in("history", "--limit", limit)
    assert code == 2 and out == ""
    assert f"argument --limit: '{limit}' is not a positive integer" in err
    assert _files(tmp_path) == []


# -- item 5: read-only commands never create a database ------------------------------------------

def test_history_and_check_in_an_empty_directory_create_nothing(cli_in, tmp_path):
    code, out, _ = cli_in("history", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = cli_in("history")
    assert code == 0 and "no runs recorded" in out
    code, out, _ = cli_in("check", "--json")
    report = {c["name"]: c for c in json.loads(out.strip().splitlines()[-1])["checks"]}
    assert report["database"]["status"] == report["run_lock"]["status"] == "ok"
    # only the provider fails: the bundled sample data cannot serve today, the cron's date
    assert code == 1 and {name for name, c in report.items() if c["status"] != "ok"} == {"provider"}
    assert "does not exist yet" in report["database"]["detail"]
    assert _files(tmp_path) == []  # no sigmasight.db, no sigmasight.db.lock
    # the first run still creates the embedded database
    assert cli_in("--date", "2022-12-26")[0] == 0  # a holiday: a skipped run is recorded
    assert "sigmasight.db" in _files(tmp_path)
    code, out, _ = cli_in("history", "--json")
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["skipped"]


@pytest.mark.parametrize("args, exit_code", [
    (["history"], 2), (["--date", "2022-12-28"], 2), (["seed-demo"], 2), (["check"], 1)])
def test_a_mistyped_sqlite_url_leaves_no_file_behind(cli_in, tmp_path, args, exit_code):
    missing = tmp_path / "x.db"
    code, out, err = cli_in(*args, DATABASE_URL=f"sqlite:///{missing}")
    assert _files(tmp_path) == []
    assert code == exit_code
    message = err if exit_code == 2 else out
    assert f"sqlite file {missing} does not exist" in message and "DATABASE_URL" in message
    if exit_code == 2:
        assert len(err.strip().splitlines()) == 1


# -- item 25: unsupported database URLs ----------------------------------------------------------

@pytest.mark.parametrize("url", ["mysql://u:pw-SECRET@h/db", "postgresql+asyncpg://u:pw-SECRET@h/db",
                                 "sqlite+aiosqlite:///x.db"])
def test_an_unsupported_database_url_is_one_line_and_exit_2(cli_in, tmp_path, url):
    code, out, err = cli_in("history", DATABASE_URL=url)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert url.split("://")[0] in err and "postgresql+psycopg://" in err and "SECRET" not in err
    assert _files(tmp_path) == []


@pytest.mark.postgresql
def test_the_psycopg2_url_form_is_read_as_psycopg3(cli_in, postgres_ready):
    url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    code, out, err = cli_in("history", "--json", DATABASE_URL=url)
    assert code == 0, err
    assert isinstance(json.loads(out), list)


# -- item 8: a --skip-sync run needs no provider key ---------------------------------------------

def test_skip_sync_with_a_network_provider_needs_no_key(seeded, engine, monkeypatch):
    assert seeded("--date", "2022-12-28").code == 0  # stores the sample prices
    monkeypatch.setenv("MARKET_DATA_PROVIDER", "fmp")
    monkeypatch.delenv("FMP_API_KEY", raising=False)
    missing_key = seeded("--date", "2022-12-28", "--force")
    assert missing_key.code == 2 and "FMP_API_KEY" in missing_key.err  # a sync still needs it
    result = seeded("--date", "2022-12-28", "--force", "--skip-sync", "--json")
    assert result.code == 0, result.err
    assert result.summary["status"] == "success"
    assert result.summary["portfolios"] == {"succeeded": 4, "failed": 0, "skipped": 0}
    assert "FMP_API_KEY" not in result.err
