"""No output channel carries a secret (SPEC §11): a run configured with a database password, API
keys, a Sentry DSN and token-bearing webhook and healthcheck URLs — on stdout, stderr, the JSON
summary, `check --json`, `history --json`, the stored run records, the webhook's and the
healthcheck's request bodies, Sentry's envelopes (real sentry-sdk, a local recording server; the
DSN's key travels only in its auth header, by design), the metrics pushed to the real Pushgateway,
and the one-line error of a database that cannot be reached."""

from __future__ import annotations

import json
import os
import urllib.request

from sqlalchemy import text
from sqlalchemy.engine import make_url

from batch import db
from batch.demo import HEDGE_FUND, demo_id
from batch import engines
from batch import runner as runner_module
from batch.engines import ENGINES, Engine
from tests.conftest import each_unit
from tests.recording_server import recording_server

SECRETS = {"FMP_API_KEY": "fmp-secret-1a2b", "POLYGON_API_KEY": "poly-secret-3c4d",
           "SENTRY_DSN": "http://dsn-secret-5e6f@127.0.0.1:9/1"}
GATEWAY = os.environ.get("TEST_PUSHGATEWAY_URL", "http://127.0.0.1:9091").rstrip("/")
PASSWORD = "pg-secret-7g8h"  # PostgreSQL's trust authentication accepts and ignores it


def _leaks(*texts: str) -> list[str]:
    values = [PASSWORD, "fmp-secret-1a2b", "poly-secret-3c4d", "dsn-secret-5e6f", "hook-secret-9i0j", "hc-secret-1k2l"]
    return [v for v in values for t in texts if v in t]


def test_no_output_channel_carries_a_secret(seeded, database_url, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password=PASSWORD)
        monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    victim = demo_id("portfolio", HEDGE_FUND)

    def fail_with_secrets(unit):  # an error message carrying every secret: what reports must mask
        if unit.portfolio_id == victim:
            raise RuntimeError(f"{url.render_as_string(hide_password=False)} apikey=fmp-secret-1a2b")
        return engines.JobOutcome("success", {})

    outputs = []
    with recording_server() as hook, recording_server() as health, recording_server() as sentry:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{hook.url}/services/hook-secret-9i0j")
        monkeypatch.setenv("HEALTHCHECK_URL", f"{health.url}/ping/hc-secret-1k2l")
        monkeypatch.setenv("SENTRY_DSN", f"http://dsn-secret-5e6f@{sentry.url.removeprefix('http://')}/1")
        monkeypatch.setenv("PROMETHEUS_PUSHGATEWAY_URL", GATEWAY)
        monkeypatch.setenv("ALERT_ON", "always")
        monkeypatch.setattr(runner_module, "ENGINES",
                            [*ENGINES, Engine("leaky", each_unit(fail_with_secrets), depends_on=("snapshot",))])
        for args in (("--date", "2022-12-28", "--json"), ("check", "--json"), ("history", "--json")):
            result = seeded(*args)
            assert result.code in (0, 1), (args, result.err)
            outputs += [result.out, result.err]
        sent = [r.body.decode(errors="replace") for server in (hook, health, sentry) for r in server.requests]
    assert len(hook.requests) == 1 and len(health.requests) == 2 and len(sentry.requests) >= 3
    with urllib.request.urlopen(f"{GATEWAY}/metrics", timeout=5) as response:
        pushed = response.read().decode()
    engine = db.make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            stored = [json.dumps(r, default=str) for query in (
                "SELECT summary FROM batch_runs", "SELECT result FROM batch_job_results",
                "SELECT error FROM batch_job_results") for r in conn.execute(text(query)).scalars()]
    finally:
        engine.dispose()
    assert len(stored) > 10 and any('"run_id"' in o for o in outputs) and "sigmasight_batch_exit_code" in pushed
    assert _leaks(*outputs, *stored, *sent, pushed) == []


def test_an_unreachable_database_is_named_without_its_password(cli, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://batch:{PASSWORD}@127.0.0.1:1/risk")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for args in (("--date", "2022-12-28", "--json"), ("check", "--json"), ("history",)):
        result = cli(*args)
        assert result.code != 0
        assert "127.0.0.1:1" in result.out + result.err  # the database is named...
        assert _leaks(result.out, result.err) == []  # ...without its password
