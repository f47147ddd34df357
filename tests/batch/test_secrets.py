"""No output channel carries a secret (SPEC §11): a run configured with a database password, API
keys and a Sentry DSN — on stdout, stderr, the JSON summary, `check --json`, `history --json`,
the stored run records, and the one-line error of a database that cannot be reached."""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.engine import make_url

from batch import db

SECRETS = {"FMP_API_KEY": "fmp-secret-1a2b", "POLYGON_API_KEY": "poly-secret-3c4d",
           "SENTRY_DSN": "https://dsn-secret-5e6f@127.0.0.1:9/1"}
PASSWORD = "pg-secret-7g8h"  # PostgreSQL's trust authentication accepts and ignores it


def _leaks(*texts: str) -> list[str]:
    values = [PASSWORD, "fmp-secret-1a2b", "poly-secret-3c4d", "dsn-secret-5e6f"]
    return [v for v in values for t in texts if v in t]


def test_no_output_channel_carries_a_secret(seeded, database_url, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password=PASSWORD)
        monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    outputs = []
    for args in (("--date", "2022-12-28", "--json"), ("check", "--json"), ("history", "--json")):
        result = seeded(*args)
        assert result.code in (0, 1), (args, result.err)
        outputs += [result.out, result.err]
    engine = db.make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            stored = [json.dumps(r, default=str) for r in conn.execute(text(
                "SELECT summary FROM batch_runs UNION ALL SELECT result FROM batch_job_results")).scalars()]
    finally:
        engine.dispose()
    assert len(stored) > 10 and any('"run_id"' in o for o in outputs)
    assert _leaks(*outputs, *stored) == []


def test_an_unreachable_database_is_named_without_its_password(cli, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://batch:{PASSWORD}@127.0.0.1:1/risk")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for args in (("--date", "2022-12-28", "--json"), ("check", "--json"), ("history",)):
        result = cli(*args)
        assert result.code != 0
        assert "127.0.0.1:1" in result.out + result.err  # the database is named...
        assert _leaks(result.out, result.err) == []  # ...without its password
