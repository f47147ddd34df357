"""Closes read as arrays, and a backfill reading its price window once (issue #11 item 5).

- `repository.load_closes` returns the frame an independent pandas pivot of the stored rows
  gives, bad closes included (for `usable_closes` to see);
- `PriceWindow.slice` is exactly a per-date `repository.session_closes`;
- a backfill reads the closes of its market symbols once, and stores what the single-date runs
  it stands for store (SPEC §7), with no look-ahead (a price after D changes nothing of D);
- it fits the symbol betas of all its dates in one batched solve, storing what per-date fits
  store (rows and job records), factor availability, gaps and bad closes per date included.

Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from batch import calendar, engines, repository
from batch.engines import DateContext, PriceWindow
from batch.settings import Settings
from batch.sync import HISTORY_SESSIONS
from calculations.prices import usable_closes
from calculations import factors
from models import BatchJobResult, MarketPrice, Position, SymbolFactorBeta
from tests.conftest import RESULT_TABLES

NOW = datetime(2023, 1, 2, tzinfo=UTC)
D = [date(2022, 12, d) for d in (20, 21, 22, 23, 27, 28)]  # NYSE sessions 2022-12-20..28 (26th closed)


def store(engine, rows: list[tuple[str, date, float]]) -> None:
    with Session(engine) as s, s.begin():
        s.add_all(MarketPrice(symbol=sym, date=d, close=c, source="test", updated_at=NOW) for sym, d, c in rows)


def test_closes_are_read_as_the_stored_rows_pivoted(engine) -> None:
    """Expected frame: the rows in range pivoted by pandas; a symbol without rows is all NaN;
    rows before `start` or after `end` are not read; a bad close (0, negative) is read as stored
    and `usable_closes` reports it."""
    days = calendar.sessions_back(date(2022, 12, 28), 8)
    rows = [("AAA", d, 10.0 + i) for i, d in enumerate(days)]
    rows += [("BBB", days[1], 0.0), ("BBB", days[3], -2.5), ("BBB", days[5], 7.25)]
    rows += [("CCC", date(2022, 12, 29), 99.0), ("CCC", days[0], 5.0)]  # one after `end`, one before start
    rows += [("ZZZ", days[4], 1.0)]  # not requested
    store(engine, rows)
    start, end = days[1], days[-1]
    with Session(engine) as s:
        frame = repository.load_closes(s, ["CCC", "BBB", "AAA", "NONE", "BBB"], start, end)
    in_range = pd.DataFrame([r for r in rows if start <= r[1] <= end and r[0] in ("AAA", "BBB", "CCC")],
                            columns=["symbol", "date", "close"])
    expected = in_range.pivot(index="date", columns="symbol", values="close").reindex(
        columns=["AAA", "BBB", "CCC", "NONE"]).astype(float)
    expected.index = pd.Index(list(expected.index), dtype=object)
    pd.testing.assert_frame_equal(frame, expected, check_names=False)
    assert all(type(d) is date for d in frame.index) and frame.index.is_monotonic_increasing
    assert frame.loc[days[3], "BBB"] == -2.5 and frame.loc[days[1], "BBB"] == 0.0
    assert usable_closes(frame)[1] == {"BBB": [days[1], days[3]]}
    with Session(engine) as s:
        assert repository.load_closes(s, [], start, end).empty
        nothing = repository.load_closes(s, ["NONE"], start, end)
    assert list(nothing.columns) == ["NONE"] and nothing.empty


def test_a_window_slice_is_the_per_date_read(engine) -> None:
    """For each date of the window: the slice equals `session_closes` read for that date alone;
    a date, a history or a symbol outside the window is refused with a one-line error."""
    days = calendar.sessions_back(D[-1], 40)
    rng = np.random.default_rng(7)
    rows = [(sym, d, float(v)) for sym in ("AAA", "BBB", "CCC") for d, v in zip(days, rng.uniform(1, 9, 40))
            if not (sym == "BBB" and d.day % 3 == 0)]  # BBB has gaps
    store(engine, rows)
    with Session(engine) as s:
        window = PriceWindow.load(s, {"AAA", "BBB", "CCC", "NONE"}, D[0], D[-1], 20)
        assert window.first_session == calendar.sessions_back(D[0], 20)[0] and window.last_session == D[-1]
        for day in D:
            for symbols, n in ((["AAA", "BBB", "CCC", "NONE"], 20), (["BBB"], 5)):
                pd.testing.assert_frame_equal(window.slice(symbols, day, n),
                                              repository.session_closes(s, symbols, day, n))
    with pytest.raises(ValueError, match="outside the price window"):
        window.slice(["AAA"], D[0], 21)
    with pytest.raises(ValueError, match="outside the price window"):
        window.slice(["AAA"], date(2022, 12, 29), 5)
    with pytest.raises(ValueError, match=r"\['DDD'\]"):
        window.slice(["AAA", "DDD"], D[-1], 5)


def test_date_context_reads_a_symbol_the_window_lacks_from_the_database(engine) -> None:
    """A position added after the window was read: its closes are read on their own, and the
    frame is the per-date read of every symbol (bad closes reported for both sources)."""
    days = calendar.sessions_back(D[-1], 10)
    store(engine, [(sym, d, 0.0 if (sym, d) in (("AAA", days[2]), ("NEW", days[4])) else 5.0 + i)
                   for sym in ("AAA", "NEW") for i, d in enumerate(days)])
    with Session(engine) as s:
        window = PriceWindow.load(s, {"AAA"}, D[-1], D[-1], 10)
        ctx = DateContext(Settings(database_url="sqlite://", embedded_database=None), D[-1], None, window=window, session=s)
        closes = ctx.load_closes({"AAA", "NEW"}, 10)
        expected = usable_closes(repository.session_closes(s, ["AAA", "NEW"], D[-1], 10))[0]
    pd.testing.assert_frame_equal(closes, expected)
    assert ctx.bad_closes == {"AAA": [days[2]], "NEW": [days[4]]}


# --- the backfill ----------------------------------------------------------------------------


def keyed_rows(engine) -> dict[str, dict[tuple, list[float]]]:
    """Every result table: its rows keyed by their columns that are not floats (the natural key
    and any text/JSON value, JSON-encoded), each mapped to its float columns."""
    out: dict[str, dict[tuple, list[float]]] = {}
    with Session(engine) as s:
        for model in RESULT_TABLES:
            cols = [c for c in model.__table__.columns if c.name != "id"]
            table: dict[tuple, list[float]] = {}
            for row in s.execute(select(*cols)):
                key = tuple(json.dumps(v, sort_keys=True, default=str) for v in row if not isinstance(v, float))
                assert key not in table, (model.__tablename__, key)
                table[key] = [v for v in row if isinstance(v, float)]
            out[model.__tablename__] = table
    return out


def assert_same_results(got: dict, expected: dict) -> None:
    """Same keys in every table, floats equal to 1e-12 relative (1e-12 absolute around zero)."""
    for table, rows in expected.items():
        assert got[table].keys() == rows.keys(), table
        for key, values in rows.items():
            assert len(got[table][key]) == len(values), (table, key)
            for a, b in zip(got[table][key], values, strict=True):
                assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), (table, key, a, b)


@pytest.fixture
def closes_reads(monkeypatch):
    """Every `repository.load_closes` call (the one statement that reads closes), as the set of
    symbols it read."""
    calls: list[frozenset[str]] = []
    real = repository.load_closes

    def spy(session, symbols, start, end):
        symbols = list(symbols)
        calls.append(frozenset(symbols))
        return real(session, symbols, start, end)

    monkeypatch.setattr(repository, "load_closes", spy)
    return calls


MARKET = {"AAPL", "MSFT", "XOM", "^GSPC", "VLUE"}  # demo holdings and factor proxies (batch/demo.py)


def test_a_backfill_reads_its_closes_once_and_equals_single_date_runs(seeded, engine, closes_reads) -> None:
    code, summary, *_ = seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat(), "--json")
    assert code == 0, summary["failed_portfolios"]
    assert summary["portfolios"] == {"succeeded": 4 * len(D), "failed": 0, "skipped": 0}
    market_reads = [c for c in closes_reads if c & MARKET]
    assert len(market_reads) == 1, [sorted(c)[:5] for c in market_reads]
    assert MARKET <= market_reads[0]
    backfill = keyed_rows(engine)
    assert all(backfill.values())

    with Session(engine) as s, s.begin():
        for model in RESULT_TABLES:
            s.execute(delete(model))
    closes_reads.clear()
    for day in D:
        code, summary, *_ = seeded("--date", day.isoformat(), "--skip-sync", "--json")
        assert code == 0 and summary["portfolios"]["succeeded"] == 4, (day, summary["failed_portfolios"])
    assert len([c for c in closes_reads if c & MARKET]) == len(D)  # the spy sees every read
    assert_same_results(keyed_rows(engine), backfill)


def test_a_backfill_does_not_look_ahead(seeded, engine) -> None:
    """Prices after D changed in the database: D's rows (and every earlier date's) are unchanged
    in a backfill that spans past D; a later date's betas do change (the edit is seen)."""
    day = D[2]
    assert seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat()).code == 0
    before = keyed_rows(engine)
    with Session(engine) as s, s.begin():
        s.execute(update(MarketPrice).where(MarketPrice.date > day, MarketPrice.symbol.in_(["AAPL", "^GSPC"]))
                  .values(close=MarketPrice.close * 1.37))
    assert seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat(), "--force", "--skip-sync").code == 0
    after = keyed_rows(engine)

    def through(rows: dict, last: date) -> dict:  # rows dated on or before `last`
        return {t: {k: v for k, v in r.items() if any(json.dumps(d.isoformat()) in k for d in D if d <= last)}
                for t, r in rows.items()}

    assert all(through(before, day).values())
    assert_same_results(through(after, day), through(before, day))
    with Session(engine) as s:
        later = s.scalars(select(SymbolFactorBeta.beta).where(
            SymbolFactorBeta.symbol == "AAPL", SymbolFactorBeta.factor == "Market",
            SymbolFactorBeta.as_of_date == D[-1])).one()
    old = next(v[0] for k, v in before["symbol_factor_betas"].items()
               if '"AAPL"' in k and '"Market"' in k and json.dumps(D[-1].isoformat()) in k)
    assert later != pytest.approx(old, rel=1e-6)


def test_a_window_that_cannot_be_read_leaves_each_global_engine_to_read_its_own(
        seeded, engine, monkeypatch, closes_reads) -> None:
    """The window read fails (say the database hiccups): a warning, then symbol betas and the
    factor covariance each read their closes as before — same rows as a run with the window."""
    assert seeded("--date", "2022-12-28").code == 0
    with_window = keyed_rows(engine)

    def unreadable(cls, *args, **kwargs):
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(PriceWindow, "load", classmethod(unreadable))
    closes_reads.clear()
    result = seeded("--date", "2022-12-28", "--force", "--skip-sync", "--json")
    assert result.code == 0, result.summary["failed_portfolios"]
    assert '"price_window_failed"' in result.out and "disk I/O error" in result.out
    assert len([c for c in closes_reads if c & MARKET]) == 2
    assert_same_results(keyed_rows(engine), with_window)


# --- symbol betas: a backfill fits all its dates in one batched solve --------------------------


def symbol_beta_payloads(engine, run_ids: set | None = None) -> dict[date, dict]:
    """as_of_date → the symbol_betas job record of the latest run (or of `run_ids`)."""
    with Session(engine) as s:
        rows = s.execute(select(BatchJobResult.as_of_date, BatchJobResult.result, BatchJobResult.run_id)
                         .where(BatchJobResult.job == "symbol_betas").order_by(BatchJobResult.id)).all()
    return {day: result for day, result, run in rows if run_ids is None or run in run_ids}


def assert_same_payload(got, expected, path=()) -> None:
    """Equal JSON values, floats to 1e-12 relative (the VIFs)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_same_payload(got[key], expected[key], (*path, key))
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_payload(a, b, (*path, i))
    elif isinstance(expected, float):
        assert isinstance(got, float) and math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12), (path, got)
    else:
        assert got == expected, path


@pytest.fixture
def fit_calls(monkeypatch):
    """The number of dates of every `fit_symbol_betas_dates` call (a per-date fit is one of one)."""
    calls: list[int] = []
    real = factors.fit_symbol_betas_dates

    def spy(symbol_returns, factor_frame, dates, **kwargs):
        calls.append(len(dates))
        return real(symbol_returns, factor_frame, dates, **kwargs)

    monkeypatch.setattr(factors, "fit_symbol_betas_dates", spy)
    return calls


def roughen_prices(engine) -> None:
    """Stored closes that exercise the fit per date: VLUE (the Value proxy) lacks the closes of
    the 32 sessions that open D[0]'s 91-close window, so Value has 58 returns on D[0], 59 on D[1]
    and 60 from D[2] on (unusable, then usable); AAPL has a bad close (0.0); MSFT has gaps; KO's
    price is constant (zero variance); JPM has too little history on every date."""
    window = calendar.sessions_back(D[0], 91)
    recent = calendar.sessions_back(D[-1], 100)
    with Session(engine) as s, s.begin():
        s.execute(delete(MarketPrice).where(MarketPrice.symbol == "VLUE", MarketPrice.date.in_(window[:32])))
        s.execute(update(MarketPrice).where(MarketPrice.symbol == "AAPL", MarketPrice.date == window[50])
                  .values(close=0.0))
        s.execute(delete(MarketPrice).where(MarketPrice.symbol == "MSFT",
                                            MarketPrice.date.in_([window[40], window[70], window[88]])))
        s.execute(update(MarketPrice).where(MarketPrice.symbol == "KO", MarketPrice.date >= recent[0])
                  .values(close=60.0))
        s.execute(delete(MarketPrice).where(MarketPrice.symbol == "JPM", MarketPrice.date.in_(recent[:70])))


def test_a_backfill_fits_symbol_betas_in_one_solve_equal_to_single_date_runs(seeded, engine, fit_calls) -> None:
    """Gaps, a bad close, a constant price, a too-short history and a factor usable on some dates
    only: the backfill fits its six dates in one call and stores the symbol_factor_betas (every
    column) and symbol_betas job records that six single-date runs store."""
    assert seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat()).code == 0  # syncs the prices
    roughen_prices(engine)
    fit_calls.clear()
    code, summary, *_ = seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat(), "--force", "--skip-sync",
                               "--json")
    assert code == 0, summary["failed_portfolios"]
    assert fit_calls == [len(D)]  # one batched solve, no per-date fit
    backfill, payloads = keyed_rows(engine), symbol_beta_payloads(engine)
    with Session(engine) as s:
        flags = dict(s.execute(select(SymbolFactorBeta.as_of_date, SymbolFactorBeta.quality_flag).where(
            SymbolFactorBeta.symbol == "XOM", SymbolFactorBeta.factor == "Value")).all())
        ko = set(s.scalars(select(SymbolFactorBeta.quality_flag).where(SymbolFactorBeta.symbol == "KO")))
    assert flags[D[0]] == flags[D[1]] == "insufficient_history" and flags[D[2]] == "limited_history"
    assert "zero_variance" in ko
    assert payloads[D[0]]["factor_unavailable"]["Value"] == "insufficient_history"
    assert "Value" not in payloads[D[-1]]["factor_unavailable"] and "Value" in payloads[D[-1]]["vif"]
    assert payloads[D[-1]]["skipped"]["JPM"] == "insufficient_history"
    assert "AAPL" in payloads[D[0]]["bad_closes"]

    with Session(engine) as s, s.begin():
        for model in RESULT_TABLES:
            s.execute(delete(model))
    fit_calls.clear()
    for day in D:
        code, summary, *_ = seeded("--date", day.isoformat(), "--skip-sync", "--json")
        assert code == 0, (day, summary["failed_portfolios"])
    assert fit_calls == [1] * len(D)
    assert_same_results(keyed_rows(engine), backfill)
    single = symbol_beta_payloads(engine)
    assert single.keys() == payloads.keys() == set(D)
    for day in D:
        assert_same_payload(single[day], payloads[day], (day.isoformat(),))


def test_a_portfolio_backfill_refits_only_missing_symbols_from_the_batch(seeded, engine, fit_calls) -> None:
    """--portfolio: betas stored for the date are reused and only symbols without them are
    fitted — taken from the batched fit — giving the rows a full run stored."""
    assert seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat()).code == 0
    roughen_prices(engine)
    assert seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat(), "--force", "--skip-sync").code == 0
    full = keyed_rows(engine)["symbol_factor_betas"]
    with Session(engine) as s, s.begin():
        s.execute(delete(SymbolFactorBeta).where(SymbolFactorBeta.symbol.in_(["KO", "XOM"])))
        pid = s.scalar(select(Position.portfolio_id).where(Position.symbol == "KO").limit(1))
    fit_calls.clear()
    code, summary, *_ = seeded("--start", D[0].isoformat(), "--end", D[-1].isoformat(), "--force", "--skip-sync",
                               "--portfolio", str(pid), "--json")
    assert code == 0, summary["failed_portfolios"]
    assert fit_calls == [len(D)]
    assert_same_results({"symbol_factor_betas": keyed_rows(engine)["symbol_factor_betas"]},
                        {"symbol_factor_betas": full})
    payloads = symbol_beta_payloads(engine)
    assert {day: (payloads[day]["fitted"], payloads[day]["reused"] > 0) for day in D} == dict.fromkeys(D, (2, True))


def test_a_symbol_the_window_lacks_is_fitted_for_its_date_alone(fit_calls) -> None:
    """A symbol added since the window was read (in `market_closes`, not in the window): that
    date falls back to the per-date fit; its numbers equal the batched fit of a window holding
    the symbol, and every date of a window holding all symbols comes from one batched solve."""
    days = calendar.sessions_back(D[-1], HISTORY_SESSIONS + len(D) - 1)
    rng = np.random.default_rng(3)
    proxies = {"Market": "MKT", "Value": "VAL", "Interest Rate": "RATE"}
    market = rng.normal(0.0, 0.01, len(days))
    moves = {"MKT": market, "VAL": market * 0.8 + rng.normal(0.0, 0.005, len(days)),
             "RATE": rng.normal(0.0, 0.004, len(days)), "AAA": 1.3 * market + rng.normal(0.0, 0.01, len(days)),
             "NEW": -0.4 * market + rng.normal(0.0, 0.01, len(days))}
    closes = pd.DataFrame({sym: 50.0 * np.cumprod(1.0 + r) for sym, r in moves.items()},
                          index=pd.Index(days, dtype=object))
    closes.iloc[-40, closes.columns.get_loc("NEW")] = np.nan
    settings = Settings(database_url="sqlite://", embedded_database=None)
    full = PriceWindow(closes, frozenset(closes.columns))
    lacking = PriceWindow(closes.drop(columns=["NEW"]), frozenset(closes.columns) - {"NEW"})

    def fit(window: PriceWindow, day: date) -> factors.BetaFit:
        ctx = DateContext(settings, day, None, window=window)
        ctx.market_closes = usable_closes(full.slice(list(closes.columns), day, HISTORY_SESSIONS))[0]
        return engines._symbol_beta_fit(ctx, ["AAA", "NEW"], proxies)

    batched = [fit(full, day) for day in D]
    assert fit_calls == [len(D)]
    fit_calls.clear()
    alone = [fit(lacking, day) for day in D]
    assert fit_calls == [1] * len(D)
    for a, b in zip(batched, alone, strict=True):
        assert a.symbols == b.symbols == ("AAA", "NEW") and a.factors == b.factors and a.skipped == b.skipped
        assert a.estimates() and [(e.symbol, e.factor, e.observations) for e in a.estimates()] == [
            (e.symbol, e.factor, e.observations) for e in b.estimates()]
        for name in ("beta", "std_error", "t_stat", "r_squared"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=0)


def test_symbol_betas_output_holds_every_beta_of_a_fit() -> None:
    """`SymbolBetas` of a fit, against its estimates: each symbol's betas (factor order) where a
    cell has one — all factors, some (no rate estimate), none (constant returns: zero variance)
    — the Market cell's R² and observations as stats, skipped symbols absent."""
    rng = np.random.default_rng(9)
    index = pd.Index(calendar.sessions_back(D[-1], 90), dtype=object)
    frame = pd.DataFrame(rng.normal(0.0, 0.01, (90, 3)), index=index, columns=["Market", "Value", "Interest Rate"])
    frame.iloc[30:40, 2] = np.nan  # PART keeps 55 rate rows: no rate estimate
    returns = pd.DataFrame({"A": rng.normal(0.0, 0.01, 90), "FLAT": 0.0,
                            "PART": np.r_[np.full(25, np.nan), rng.normal(0.0, 0.01, 65)], "GONE": np.nan},
                           index=index)
    fit = factors.fit_symbol_betas(returns, frame, {"Growth": "factor_unavailable"})
    out = engines._symbol_betas_output(fit, [], dict(fit.unavailable))
    estimates = fit.estimates()
    expected = {}
    for e in estimates:
        if e.beta is not None:
            expected.setdefault(e.symbol, {})[e.factor] = e.beta
    assert out.betas == expected and list(out.betas["A"]) == ["Market", "Value", "Interest Rate"]
    assert list(out.betas["PART"]) == ["Market", "Value"] and "FLAT" not in out.betas and "GONE" not in out.betas
    assert out.stats == {e.symbol: {"r_squared": e.r_squared, "observations": e.observations}
                         for e in estimates if e.factor == "Market" and e.beta is not None}
    assert out.zero_variance == {"FLAT"} and out.unavailable == {"Growth": "factor_unavailable"}
