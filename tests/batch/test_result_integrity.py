"""The result tables have no foreign keys (migration 0005). What guarantees their integrity instead,
after real demo runs on SQLite and PostgreSQL:

- deleting a portfolio deletes exactly its rows in every result table, deleting a position exactly
  its rows in the tables keyed by position (the delete triggers);
- deleting a stress scenario that has results is refused;
- the job never writes an orphan: no result row names a portfolio, position or scenario that does
  not exist, after a run, after a forced rerun following a position's deletion, and when a
  portfolio and a position are deleted while the run computes (those units fail, job `write`).

Expected counts are plain SQL counts of the stored rows per portfolio and per position, taken
before the delete: never the triggers' or the job's own figures."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from sqlalchemy import delete, insert, text
from sqlalchemy.exc import IntegrityError

from batch import runner as runner_module
from batch.demo import HEDGE_FUND, INDIVIDUAL, demo_id
from batch.engines import ENGINES, Engine, JobOutcome
from models import Portfolio, Position, StressScenario

AS_OF = date(2022, 12, 28)
# every result table written per unit, with the parent each of its id columns names
PARENTS = {
    "position_valuations": {"portfolio_id": "portfolios", "position_id": "positions"},
    "position_greeks": {"portfolio_id": "portfolios", "position_id": "positions"},
    "position_factor_exposures": {"portfolio_id": "portfolios", "position_id": "positions"},
    "portfolio_factor_exposures": {"portfolio_id": "portfolios"},
    "market_risk_results": {"portfolio_id": "portfolios"},
    "stress_test_results": {"portfolio_id": "portfolios", "scenario_id": "stress_scenarios"},
    "correlation_runs": {"portfolio_id": "portfolios"},
    "correlation_matrices": {"portfolio_id": "portfolios"},
    "correlation_clusters": {"portfolio_id": "portfolios"},
    "portfolio_snapshots": {"portfolio_id": "portfolios"},
}
PARENT_KEY = {"portfolios": "id", "positions": "id", "stress_scenarios": "scenario_id"}
POSITION_TABLES = [t for t, parents in PARENTS.items() if "position_id" in parents]


def run(cli, *extra: str) -> None:
    """The daily job for AS_OF (the first run syncs the sample prices; later ones pass --skip-sync)."""
    result = cli("--date", AS_OF.isoformat(), "--json", *extra)
    assert result.code == 0 and result.summary["status"] == "success", (result.code, result.summary, result.err)


def rows_by(engine, column: str, tables) -> dict[str, dict[str, int]]:
    """table → {id as stored: its row count}, for the tables that have `column`."""
    out = {}
    with engine.connect() as conn:
        for table in tables:
            out[table] = {str(k): n for k, n in conn.execute(text(
                f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}")).all()}
    return out


def stored(engine, value: uuid.UUID) -> str:
    """How an id is stored, as `rows_by` returns it: 32 hex digits on SQLite, the UUID's text on PostgreSQL."""
    return value.hex if engine.dialect.name == "sqlite" else str(value)


def orphans(engine) -> dict[str, int]:
    """table → its rows whose portfolio, position or scenario does not exist."""
    out = {}
    with engine.connect() as conn:
        for table, parents in PARENTS.items():
            missing = " OR ".join(f"NOT EXISTS (SELECT 1 FROM {parent} WHERE {parent}.{PARENT_KEY[parent]} = "
                                  f"{table}.{column})" for column, parent in parents.items())
            out[table] = conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE {missing}")).scalar()
    return out


def totals(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in PARENTS}


def test_deleting_a_portfolio_deletes_exactly_its_result_rows(seeded, engine):
    run(seeded)
    book = demo_id("portfolio", HEDGE_FUND)
    before = rows_by(engine, "portfolio_id", PARENTS)
    assert all(before[t].get(stored(engine, book), 0) > 0 for t in PARENTS), before  # it has rows everywhere
    others = {t for t, counts in before.items() if set(counts) - {stored(engine, book)}}
    assert others == set(PARENTS) - {"position_greeks"}  # other books' rows to keep (options: its alone)

    with engine.begin() as conn:
        assert conn.execute(delete(Portfolio).where(Portfolio.id == book)).rowcount == 1
    expected = {t: {k: n for k, n in counts.items() if k != stored(engine, book)} for t, counts in before.items()}
    assert rows_by(engine, "portfolio_id", PARENTS) == expected  # its rows gone, every other row kept
    assert orphans(engine) == dict.fromkeys(PARENTS, 0)
    with engine.connect() as conn:  # its positions went too (positions keep their foreign key)
        assert conn.execute(text("SELECT COUNT(*) FROM positions WHERE portfolio_id = :p"),
                            {"p": stored(engine, book)}).scalar() == 0


def test_deleting_a_position_deletes_exactly_its_result_rows(seeded, engine):
    run(seeded)
    by_position = rows_by(engine, "position_id", POSITION_TABLES)
    by_portfolio = rows_by(engine, "portfolio_id", PARENTS)
    # a position with rows in every table keyed by position: an option of the hedge fund book
    with engine.connect() as conn:
        candidates = conn.execute(text(
            "SELECT id FROM positions WHERE portfolio_id = :p AND investment_class = 'OPTIONS' ORDER BY symbol"),
            {"p": stored(engine, demo_id("portfolio", HEDGE_FUND))}).scalars().all()
    chosen = next(str(c) for c in candidates if all(by_position[t].get(str(c), 0) > 0 for t in POSITION_TABLES))
    removed = {t: by_position[t][chosen] for t in POSITION_TABLES}

    with engine.begin() as conn:
        assert conn.execute(text("DELETE FROM positions WHERE id = :x"), {"x": chosen}).rowcount == 1
    assert rows_by(engine, "position_id", POSITION_TABLES) == {
        t: {k: n for k, n in counts.items() if k != chosen} for t, counts in by_position.items()}
    book = stored(engine, demo_id("portfolio", HEDGE_FUND))
    expected = {t: {k: n - (removed.get(t, 0) if k == book else 0) for k, n in counts.items()}
                for t, counts in by_portfolio.items()}
    assert rows_by(engine, "portfolio_id", PARENTS) == expected  # the portfolio's own rows untouched
    assert orphans(engine) == dict.fromkeys(PARENTS, 0)


def test_a_stress_scenario_with_results_cannot_be_deleted(seeded, engine):
    run(seeded)
    with engine.connect() as conn:
        used = conn.execute(text("SELECT scenario_id FROM stress_test_results ORDER BY scenario_id")).scalars().first()
    before = totals(engine)
    with pytest.raises(IntegrityError, match="deactivate it"), engine.begin() as conn:
        conn.execute(delete(StressScenario).where(StressScenario.scenario_id == used))
    assert totals(engine) == before
    with engine.begin() as conn:  # one without results can be deleted
        conn.execute(insert(StressScenario).values(scenario_id="unused", name="Unused", category="test",
                                                   severity="mild", shocks={"Market": -0.01}, is_active=False))
        assert conn.execute(delete(StressScenario).where(StressScenario.scenario_id == "unused")).rowcount == 1


def test_the_job_never_writes_an_orphan(seeded, engine):
    """After a run, and after a forced rerun once a position was deleted (its rows go with it, by
    trigger; the rerun must not write them back): no result row without its parent."""
    run(seeded)
    assert all(n > 0 for n in totals(engine).values()), totals(engine)
    assert orphans(engine) == dict.fromkeys(PARENTS, 0)

    book = demo_id("portfolio", INDIVIDUAL)
    with engine.connect() as conn:
        gone = conn.execute(text("SELECT id FROM positions WHERE portfolio_id = :p AND symbol = 'AAPL'"),
                            {"p": stored(engine, book)}).scalar_one()
    valued = rows_by(engine, "portfolio_id", ["position_valuations"])["position_valuations"][stored(engine, book)]
    with engine.begin() as conn:
        conn.execute(delete(Position).where(Position.id == uuid.UUID(str(gone))))
    run(seeded, "--force", "--skip-sync")
    assert all(n > 0 for n in totals(engine).values()), totals(engine)
    # the book was rewritten: every position it still holds valued again, the deleted one not
    assert rows_by(engine, "portfolio_id", ["position_valuations"])["position_valuations"][stored(engine, book)] \
        == valued - 1
    assert orphans(engine) == dict.fromkeys(PARENTS, 0)
    assert all(str(gone) not in rows for rows in rows_by(engine, "position_id", POSITION_TABLES).values())
    with engine.begin() as conn:  # the check sees an orphan: one row naming the deleted position
        conn.execute(text("INSERT INTO position_greeks (position_id, portfolio_id, as_of_date, status) "
                          "VALUES (:x, :p, :d, 'ok')"), {"x": str(gone), "p": stored(engine, book), "d": AS_OF})
    assert orphans(engine) == {**dict.fromkeys(PARENTS, 0), "position_greeks": 1}


def test_parents_deleted_while_the_run_computes_fail_their_units_and_leave_no_orphan(seeded, engine, monkeypatch):
    """A portfolio and another book's option position are deleted (committed, on a connection of
    their own) after the run has read them, while it computes their chunk: the chunk's write finds
    them gone, so those two units fail with job `write` naming what was deleted and nothing of
    them is written back; the two other books are written whole."""
    run(seeded)
    victim, book = demo_id("portfolio", INDIVIDUAL), demo_id("portfolio", HEDGE_FUND)
    with engine.connect() as conn:
        option = uuid.UUID(str(conn.execute(text(
            "SELECT id FROM positions WHERE portfolio_id = :p AND investment_class = 'OPTIONS' ORDER BY symbol"),
            {"p": stored(engine, book)}).scalars().first()))

    def delete_mid_run(chunk):
        with engine.begin() as conn:
            conn.execute(delete(Portfolio).where(Portfolio.id == victim))
            conn.execute(delete(Position).where(Position.id == option))
        return [JobOutcome("success", {}) for _ in chunk.units]

    monkeypatch.setattr(runner_module, "ENGINES",
                        [*ENGINES, Engine("deleter", delete_mid_run, depends_on=("snapshot",))])
    result = seeded("--date", AS_OF.isoformat(), "--force", "--skip-sync", "--json")
    assert result.code == 1, result.err
    assert result.summary["portfolios"] == {"succeeded": 2, "failed": 2, "skipped": 0}
    failed = {f["portfolio_id"]: f for f in result.summary["failed_portfolios"]}
    assert set(failed) == {str(victim), str(book)}
    assert {f["job"] for f in failed.values()} == {"write"}
    assert failed[str(victim)]["error"].startswith(f"ParentDeleted: deleted during the run: portfolio {victim}, ")
    assert failed[str(book)]["error"] == f"ParentDeleted: deleted during the run: position {option}"
    assert orphans(engine) == dict.fromkeys(PARENTS, 0)
