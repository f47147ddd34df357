"""Job records are summaries (SPEC §8): a map a result table holds is recorded as
`{"stored_in": table, "rows": n}`, the seven records of a unit stay under 4 KB, and the skip
payloads are the contract's, literally.

The oracles are the database: the stored JSON's length in bytes as the database holds it, and
`count(*)` of each named table for the unit's portfolio and date.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Any

import pytest
from sqlalchemy import LargeBinary, Text, cast, func, select
from sqlalchemy.orm import Session

from batch.demo import HEDGE_FUND, HNW, INDIVIDUAL, PRIVATE_ONLY, PRIVATES, demo_id
from models import Base, BatchJobResult, CorrelationRun, Portfolio, Position, ViewBase
from tests.conftest import load_script

AS_OF = date(2022, 12, 28)
BUDGET = 4096  # bytes of JSON, all seven records of a unit together
PORTFOLIO_JOBS = {"valuation", "greeks", "factors", "market_risk", "stress_tests", "correlations", "snapshot"}
DEMO_BOOKS = (INDIVIDUAL, HNW, HEDGE_FUND, PRIVATE_ONLY)

# Where each map of a computed record is, for a book with options (the hedge fund): job → path → table.
HEDGE_FUND_STORED_IN = {
    ("valuation", "positions"): "position_valuations",
    ("greeks", "positions"): "position_greeks",
    ("factors", "factor_betas"): "portfolio_factor_exposures",
    ("factors", "position_betas"): "position_factor_exposures",
    ("market_risk", "scenarios"): "market_risk_results",
    ("stress_tests", "stress_test_results.direct_impacts"): "stress_test_results",
    ("stress_tests", "stress_test_results.correlated_impacts"): "stress_test_results",
    ("stress_tests", "correlation_matrix_info"): "factor_correlations",
    ("correlations", "correlation_matrix"): "pairwise_correlations",
    ("correlations", "clusters"): "correlation_clusters",
    ("snapshot", "greeks"): "portfolio_snapshots",
}


def records(engine, portfolio_id: uuid.UUID) -> dict[str, BatchJobResult]:
    with Session(engine) as s:
        return {j.job: j for j in s.scalars(select(BatchJobResult).where(
            BatchJobResult.portfolio_id == portfolio_id, BatchJobResult.as_of_date == AS_OF))}


def stored_bytes(engine, portfolio_id: uuid.UUID) -> int:
    """Bytes of the unit's job-record JSON as the database stores it."""
    size = (func.octet_length(cast(BatchJobResult.result, Text)) if engine.dialect.name == "postgresql"
            else func.length(cast(BatchJobResult.result, LargeBinary)))
    with Session(engine) as s:
        return int(s.scalar(select(func.sum(size)).where(BatchJobResult.portfolio_id == portfolio_id,
                                                         BatchJobResult.as_of_date == AS_OF)))


def stored_in_entries(value: Any, path: str = "") -> dict[str, dict[str, Any]]:
    """Every `{"stored_in": ...}` inside `value`, by its dotted path."""
    if not isinstance(value, dict):
        return {}
    if "stored_in" in value:
        return {path: value}
    found: dict[str, dict[str, Any]] = {}
    for key, inner in value.items():
        found.update(stored_in_entries(inner, f"{path}.{key}" if path else key))
    return found


def table_rows(engine, table_name: str, portfolio_id: uuid.UUID) -> int:
    """count(*) of `table_name` for the unit (factor_correlations: for the date, it has no portfolio)."""
    table = Base.metadata.tables.get(table_name)
    if table is None:  # a view (pairwise_correlations)
        table = ViewBase.metadata.tables[table_name]
    date_column = table.c.snapshot_date if "snapshot_date" in table.c else table.c.as_of_date
    query = select(func.count()).select_from(table).where(date_column == AS_OF)
    if "portfolio_id" in table.c:
        query = query.where(table.c.portfolio_id == portfolio_id)
    with Session(engine) as s:
        return s.scalar(query)


def assert_summaries(engine, portfolio_id: uuid.UUID) -> dict[tuple[str, str], dict[str, Any]]:
    """The unit's seven records: under the budget, each `stored_in` naming a table with exactly
    that many rows for the unit, and no position id anywhere (no per-position copy). Returns the
    `stored_in` entries by (job, path)."""
    jobs = records(engine, portfolio_id)
    assert set(jobs) == PORTFOLIO_JOBS
    size = stored_bytes(engine, portfolio_id)
    assert size == sum(len(json.dumps(j.result, separators=(",", ":"))) for j in jobs.values())
    assert size < BUDGET, (portfolio_id, size, {k: len(json.dumps(j.result)) for k, j in jobs.items()})
    with Session(engine) as s:
        position_ids = [str(i) for i in s.scalars(select(Position.id).where(Position.portfolio_id == portfolio_id))]
    entries = {}
    for job, record in jobs.items():
        document = json.dumps(record.result)
        assert not [i for i in position_ids if i in document], job
        for path, entry in stored_in_entries(record.result).items():
            assert set(entry) == {"stored_in", "rows"}, (job, path)
            assert entry["rows"] == table_rows(engine, entry["stored_in"], portfolio_id), (job, path, entry)
            entries[job, path] = entry
    return entries


def test_demo_job_records_are_summaries_under_4_kb(seeded, engine):
    assert seeded("--date", AS_OF.isoformat())[0] == 0
    for key in DEMO_BOOKS:
        entries = assert_summaries(engine, demo_id("portfolio", key))
        if key == HEDGE_FUND:
            assert {k: e["stored_in"] for k, e in entries.items()} == HEDGE_FUND_STORED_IN
            rows = {k: e["rows"] for k, e in entries.items()}
            # the hedge fund's 30 positions: 8 options, 22 stocks (231 pairs), 6 factors with data, 18 scenarios
            assert rows["valuation", "positions"] == 30 and rows["greeks", "positions"] == 8
            assert rows["correlations", "correlation_matrix"] == 22 * 21 // 2
            assert rows["factors", "factor_betas"] == 6 and rows["factors", "position_betas"] == 30 * 6
            assert rows["stress_tests", "stress_test_results.direct_impacts"] == 18
            assert rows["stress_tests", "correlation_matrix_info"] == 6 * 7 // 2
        if key == PRIVATE_ONLY:  # computed: valuation and snapshot only
            assert set(entries) == {("valuation", "positions"), ("snapshot", "greeks")}


def test_private_only_skip_payloads_are_the_contract_literally(seeded, engine):
    """SPEC §8's skip payloads of factors, correlations and stress tests, whole."""
    assert seeded("--date", AS_OF.isoformat())[0] == 0
    pid = demo_id("portfolio", PRIVATE_ONLY)
    total = len(PRIVATES[PRIVATE_ONLY])
    jobs = records(engine, pid)
    assert {j: jobs[j].status for j in ("factors", "stress_tests", "correlations")} == dict.fromkeys(
        ("factors", "stress_tests", "correlations"), "skipped")
    quality = {"flag": "no_public_positions", "positions_analyzed": 0, "positions_total": total,
               "positions_skipped": total, "data_days": 0}
    assert jobs["factors"].result == {
        "factor_betas": {}, "position_betas": {}, "regression_stats": {},
        "data_quality": {"flag": "no_public_positions", "quality_flag": "no_public_positions",
                         "message": "Portfolio contains no public positions with sufficient price history",
                         "positions_analyzed": 0, "positions_total": total, "positions_skipped": total,
                         "data_days": 0},
        "metadata": {"calculation_date": "2022-12-28", "regression_window_days": 0,
                     "status": "SKIPPED_NO_PUBLIC_POSITIONS", "portfolio_id": str(pid)},
        "storage_results": {"position_storage": {"records_stored": 0, "skipped": True},
                            "portfolio_storage": {"records_stored": 0, "skipped": True}},
    }
    assert jobs["correlations"].result == {
        "status": "SKIPPED", "message": "No public positions with sufficient data", "correlation_matrix": {},
        "clusters": [], "metrics": {"avg_correlation": 0.0, "positions_analyzed": 0},
        "calculation_date": "2022-12-28", "duration_days": 90,
        "data_quality": {**quality, "message": "No public positions with sufficient data", "positions_merged": 0,
                         "excluded": {}},
    }
    assert jobs["stress_tests"].result == {
        "stress_test_results": {"direct_impacts": {}, "correlated_impacts": {}, "summary_stats": {},
                                "portfolio_id": str(pid), "calculation_date": "2022-12-28", "skipped": True,
                                "skip_reason": "no_factor_exposures"},
        "portfolio_name": "Demo Private Markets Only",
        # the sample data: Growth and Interest Rate have no proxy prices (SPEC §6.3)
        "correlation_matrix_info": {"factors": ["Market", "Value", "Momentum", "Quality", "Size", "Low Volatility"],
                                    "observations": 252, "decay": 0.94, "method": "conditional_expectation",
                                    "factor_unavailable": {"Growth": "factor_unavailable",
                                                           "Interest Rate": "factor_unavailable"}},
        "data_quality": {**quality, "message": "Portfolio has no factor exposures"},
    }
    # the same top-level keys as a computed record (SPEC §8)
    computed = records(engine, demo_id("portfolio", HEDGE_FUND))
    for job in PORTFOLIO_JOBS:
        assert set(jobs[job].result) == set(computed[job].result), job


def test_benchmark_sized_books_of_50_positions_stay_under_4_kb(cli, engine):
    """scripts/benchmark.py's universe: books of 50 positions (stocks, shorts, options, private
    holdings) over 200 symbols, many too small to enter the correlations (a long `excluded` map,
    capped in the record with its exact count)."""
    load_script("benchmark").build_universe(engine, portfolios=3, positions=50, symbols=200, seed=11)
    result = cli("--date", AS_OF.isoformat(), "--skip-sync", "--json")
    assert result.code == 0, result.err
    with Session(engine) as s:
        books = list(s.scalars(select(Portfolio.id)))
        assert [s.scalar(select(func.count()).select_from(Position).where(Position.portfolio_id == b))
                for b in books] == [50, 50, 50]
    truncated = 0
    for book in books:
        assert_summaries(engine, book)
        quality = records(engine, book)["correlations"].result["data_quality"]
        if quality.get("excluded_truncated"):
            truncated += 1
            assert len(quality["excluded"]) == 5
            with Session(engine) as s:
                run = s.scalar(select(CorrelationRun.positions_excluded).where(CorrelationRun.portfolio_id == book))
            assert quality["excluded_count"] == run
    assert truncated >= 1  # the cap was exercised


@pytest.mark.parametrize("book", [1, 5, 6, 12])
def test_capped_lists_keep_an_exact_count(book):
    """`capped` keeps the first 5 entries of a list or map longer than 5 and says so; a shorter
    one is left as it was, with no extra keys."""
    from batch.engines import capped

    as_list = [f"S{i}" for i in range(book)]
    as_map = {f"S{i}": "below_min_value" for i in range(book)}
    notes: dict[str, Any] = {}
    out = capped({"excluded": as_map, "skipped": as_list}, "excluded", "skipped", notes=notes)
    if book <= 5:
        assert out == {"excluded": as_map, "skipped": as_list} and notes == {}
    else:
        assert out == {"excluded": {f"S{i}": "below_min_value" for i in range(5)},
                       "skipped": ["S0", "S1", "S2", "S3", "S4"]}
        assert notes == {"excluded_count": book, "excluded_truncated": True,
                         "skipped_count": book, "skipped_truncated": True}
        inline = capped({"skipped": as_list}, "skipped")
        assert inline == {"skipped": as_list[:5], "skipped_count": book, "skipped_truncated": True}
