"""Database reads and writes for the shell. Functions take a session and never commit."""

from __future__ import annotations

import itertools
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Float, Text, and_, bindparam, cast, func, or_, select, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from batch import calendar
from batch.errors import InvalidInputRow
from calculations.positions import (
    OPTION_TYPES,
    OPTIONS,
    PRIVATE,
    PUBLIC,
    PositionInput,
    option_root,
    price_symbols,
)
from calculations.prices import usable_closes
from calculations.snapshot import CHAIN_FLAGS, ChainLink, PriorSnapshot, rechain
from models import (
    BatchJobResult,
    FactorDefinition,
    MarketPrice,
    Portfolio,
    PortfolioSnapshot,
    Position,
    StressScenario,
    SymbolFactorBeta,
)

# Factor names are part of the contract (SPEC §6.3). Proxies: production defaults, and what the
# offline `sample` provider has (Growth and Interest Rate keep proxies it cannot serve, so they
# are reported `factor_unavailable`, not dropped).
FACTORS = ("Market", "Value", "Growth", "Momentum", "Quality", "Size", "Low Volatility", "Interest Rate")
FACTOR_KINDS = {"Market": "market", "Interest Rate": "rates"}
DEFAULT_PROXIES = {"Market": "SPY", "Value": "VTV", "Growth": "VUG", "Momentum": "MTUM",
                   "Quality": "QUAL", "Size": "IWM", "Low Volatility": "USMV", "Interest Rate": "TLT"}
SAMPLE_PROXIES = {**DEFAULT_PROXIES, "Market": "^GSPC", "Value": "VLUE", "Size": "SIZE"}


@dataclass(frozen=True)
class PortfolioRow:
    id: uuid.UUID
    name: str
    cash_balance: float  # NaN when `invalid`
    invalid: InvalidInputRow | None = None  # a stored value that fails this portfolio alone


# --- reading stored input rows ---------------------------------------------------------------
# Input tables are edited by people and other programs, so a value may be anything the database
# holds: text in a NUMERIC column on SQLite ('ten'), NaN in a PostgreSQL numeric (±Infinity in
# a float), 'infinity' in a PostgreSQL date (which the driver cannot turn into a Python date). Such columns
# are read as the driver returns them (numbers) or as text (dates), and each row is checked
# here, so a bad row fails only its own portfolio, with a one-line InvalidInputRow naming the
# row, the column and the value (SPEC §7).

INVESTMENT_CLASSES = (PUBLIC, OPTIONS, PRIVATE)


def _raw(column: ColumnElement) -> ColumnElement:
    """The column as the driver returns it, without SQLAlchemy's conversion (which raises):
    on SQLite the stored float, int or text; on PostgreSQL a Decimal (NaN possible) or float."""
    return type_coerce(column, NullType())


def _as_text(column: ColumnElement) -> ColumnElement:
    """A date column as text: ISO on SQLite and under PostgreSQL's default DateStyle (ISO);
    'infinity' stays text instead of failing the whole query in the driver."""
    return cast(column, Text)


class _BadValue(ValueError):
    """(column, value, problem): the row reader that catches it names the row (InvalidInputRow)."""


def _number(raw: object, column: str) -> float | None:
    """A stored number as a finite float; None for NULL. Raises _BadValue for a value that is
    not a number or is NaN/±infinity."""
    if raw is None:
        return None
    try:
        value = float(raw)  # float, int, Decimal, or numeric text
    except (TypeError, ValueError):
        raise _BadValue(column, raw, "is not a number") from None
    if not math.isfinite(value):
        raise _BadValue(column, raw, "is not a finite number")
    return value


def _date(raw: str | None, column: str) -> date | None:
    """A date read as ISO text (`_as_text`); None for NULL. Raises _BadValue for anything else
    ('infinity', a year past 9999, garbage text)."""
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except (TypeError, ValueError):
        raise _BadValue(column, raw, "is not a date") from None


def investment_class(raw: str | None) -> str | None:
    """`investment_class` as every reader compares it: stripped and upper-cased (' private ' is
    PRIVATE); NULL or blank is None (not PRIVATE)."""
    if raw is None:
        return None
    return raw.strip().upper() or None


def ensure_factor_definitions(session: Session, provider_name: str) -> int:
    """Insert the eight factors if missing (never overwrites an operator's edits). Returns the
    number inserted."""
    proxies = SAMPLE_PROXIES if provider_name == "sample" else DEFAULT_PROXIES
    existing = set(session.scalars(select(FactorDefinition.name)))
    added = 0
    for order, name in enumerate(FACTORS, start=1):
        if name not in existing:
            session.add(FactorDefinition(name=name, proxy_symbol=proxies[name],
                                         kind=FACTOR_KINDS.get(name, "style"), is_active=True,
                                         display_order=order))
            added += 1
    session.flush()
    return added


def factor_proxies(session: Session) -> dict[str, str | None]:
    """Active factors in display order → proxy symbol (None when it has none)."""
    rows = session.execute(select(FactorDefinition.name, FactorDefinition.proxy_symbol).where(
        FactorDefinition.is_active.is_(True)).order_by(FactorDefinition.display_order))
    return dict(rows.all())


def ensure_stress_scenarios(session: Session) -> int:
    """Insert the scenarios of `batch/data/stress_scenarios.json` that `stress_scenarios` lacks
    (idempotent; an operator's edits or deactivations are kept). Returns the number inserted."""
    raw = json.loads((resources.files("batch") / "data" / "stress_scenarios.json").read_text())
    existing = set(session.scalars(select(StressScenario.scenario_id)))
    missing = [StressScenario(**r, is_active=True) for r in raw if r["scenario_id"] not in existing]
    session.add_all(missing)
    session.flush()
    return len(missing)


def active_stress_scenarios(session: Session) -> list[tuple[str, dict[str, float]]]:
    """(scenario_id, shocks) for every active scenario, ordered by id."""
    rows = session.execute(select(StressScenario.scenario_id, StressScenario.shocks).where(
        StressScenario.is_active.is_(True)).order_by(StressScenario.scenario_id))
    return [(sid, {str(k): float(v) for k, v in shocks.items()}) for sid, shocks in rows]


def active_factor_proxies(session: Session) -> list[str]:
    rows = session.scalars(select(FactorDefinition.proxy_symbol).where(
        FactorDefinition.is_active.is_(True), FactorDefinition.proxy_symbol.is_not(None)))
    return sorted(set(rows))


def active_portfolios(session: Session, only: Sequence[uuid.UUID] | None = None) -> list[PortfolioRow]:
    """Portfolios not deleted, ordered by id (a stable processing order). A portfolio whose
    cash_balance is not a finite number is returned `invalid` (cash NaN): it fails alone."""
    query = (select(Portfolio.id, Portfolio.name, _raw(Portfolio.cash_balance))
             .where(Portfolio.deleted_at.is_(None)).order_by(Portfolio.id))
    if only:
        query = query.where(Portfolio.id.in_(list(only)))
    rows = []
    for pid, name, cash in session.execute(query):
        try:
            rows.append(PortfolioRow(pid, name, _number(cash, "cash_balance") or 0.0))
        except _BadValue as bad:
            rows.append(PortfolioRow(pid, name, math.nan, InvalidInputRow(f"portfolio {pid}", *bad.args)))
    return rows


def unknown_portfolio_ids(session: Session, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The ids in `ids` that are not active portfolios."""
    known = {p.id for p in active_portfolios(session, ids)}
    return [i for i in ids if i not in known]


def load_positions(session: Session,
                   portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[PositionInput] | InvalidInputRow]:
    """Every non-deleted position of these portfolios (engines decide which are held on a
    date), in one query, by portfolio (every requested id present, possibly with an empty list),
    each list ordered by position id. Symbols, position types and investment classes are
    stripped and upper-cased (symbols as the sync stores them). A portfolio with a row that
    cannot be read maps to the InvalidInputRow of its first such row (by position id)."""
    found: dict[uuid.UUID, list[PositionInput] | InvalidInputRow] = {pid: [] for pid in portfolio_ids}
    if not portfolio_ids:
        return found
    p = Position
    query = (select(p.id, p.portfolio_id, p.symbol, p.position_type, _raw(p.quantity), _raw(p.entry_price),
                    _as_text(p.entry_date), _as_text(p.exit_date), p.investment_class, p.underlying_symbol,
                    _raw(p.strike_price), _as_text(p.expiration_date), _raw(p.implied_volatility))
             .where(p.portfolio_id.in_(list(portfolio_ids)), p.deleted_at.is_(None))
             .order_by(p.portfolio_id, p.id))
    for row in session.connection().execute(query):  # Core: no ORM row processing
        held = found[row[1]]
        if isinstance(held, InvalidInputRow):
            continue
        try:
            held.append(_position(row))
        except _BadValue as bad:
            found[row[1]] = InvalidInputRow(f"position {row[0]}", *bad.args)
    return found


def _position(row: Sequence) -> PositionInput:
    """One `load_positions` row, checked. Raises _BadValue for its first unusable value."""
    (pos_id, _, symbol, position_type, quantity, entry_price, entry_date, exit_date,
     raw_class, underlying, strike, expiration, implied_vol) = row
    asset_class = investment_class(raw_class)
    if asset_class is not None and asset_class not in INVESTMENT_CLASSES:
        raise _BadValue("investment_class", raw_class, f"is not one of {', '.join(INVESTMENT_CLASSES)} or NULL")
    return PositionInput(
        id=pos_id, symbol=symbol.strip().upper(), position_type=position_type.strip().upper(),
        quantity=_number(quantity, "quantity"), entry_price=_number(entry_price, "entry_price"),
        entry_date=_date(entry_date, "entry_date"), exit_date=_date(exit_date, "exit_date"),
        investment_class=asset_class,
        underlying_symbol=underlying.strip().upper() if underlying else None,
        strike_price=_number(strike, "strike_price"), expiration_date=_date(expiration, "expiration_date"),
        implied_volatility=_number(implied_vol, "implied_volatility"))


@dataclass(frozen=True)
class UnitInputs:
    """What one (portfolio, as-of date) reads besides the date's shared market closes."""

    positions: list[PositionInput]
    prior: PriorSnapshot | None  # the latest snapshot before the as-of date
    marks: dict[str, tuple[date, float]]  # PRIVATE symbol → (date, value) of its latest mark
    own_closes: OwnCloses  # its chunk's closes of symbols outside the shared frame (option contracts...)


class OwnCloses:
    """The closes of a chunk's symbols outside the date's shared market frame (option contracts,
    PRIVATE symbols, symbols no synced position holds), read once for the chunk and shared by
    its units: `frame` with every non-positive or non-finite close read as missing, `bad` the
    symbol → sessions so read (`calculations.prices.usable_closes`)."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.frame, self.bad = usable_closes(raw)


def load_unit_inputs(session: Session, portfolio_ids: Sequence[uuid.UUID], as_of: date,
                     shared_symbols: Iterable[str],
                     sessions: int) -> dict[uuid.UUID, UnitInputs | InvalidInputRow]:
    """The inputs of many portfolios for `as_of` in four queries (positions, prior snapshots,
    private marks, closes of symbols outside `shared_symbols` over `sessions` sessions: one
    `OwnCloses` for all of them), so the
    per-portfolio work never waits on the database. Nothing dated after `as_of` is read.
    A portfolio with a stored row that cannot be used (one of its positions, its prior snapshot,
    the mark of a PRIVATE symbol it holds) maps to that row's InvalidInputRow; the others load."""
    positions = load_positions(session, portfolio_ids)
    priors = prior_snapshots(session, portfolio_ids, as_of)
    shared = set(shared_symbols)
    own: dict[uuid.UUID, list[str]] = {}
    private: set[str] = set()
    for pid, held in positions.items():
        if isinstance(held, InvalidInputRow):
            continue
        own[pid] = sorted(price_symbols(held) - shared)
        private |= {p.symbol for p in held if p.asset_class == PRIVATE}
    wanted = sorted({s for symbols in own.values() for s in symbols})
    own_closes = OwnCloses(session_closes(session, wanted, as_of, sessions) if wanted else
                           pd.DataFrame(index=pd.Index(calendar.sessions_back(as_of, sessions), dtype=object)))
    marks = latest_marks(session, private, as_of)
    loaded: dict[uuid.UUID, UnitInputs | InvalidInputRow] = {}
    for pid in portfolio_ids:
        held, prior = positions[pid], priors.get(pid)
        if isinstance(held, InvalidInputRow) or isinstance(prior, InvalidInputRow):
            loaded[pid] = held if isinstance(held, InvalidInputRow) else prior
            continue
        own_marks = {p.symbol: marks[p.symbol] for p in held if p.symbol in marks and p.asset_class == PRIVATE}
        bad_mark = next((m for _, m in sorted(own_marks.items()) if isinstance(m, InvalidInputRow)), None)
        if bad_mark is not None:
            loaded[pid] = bad_mark
            continue
        loaded[pid] = UnitInputs(held, prior, own_marks, own_closes)
    return loaded


def symbols_held(session: Session, start: date, end: date,
                 portfolio_ids: Sequence[uuid.UUID] | None = None) -> list[str]:
    """Market symbols of positions held at some close in [start, end] in active portfolios:
    PRIVATE excluded NULL-safely (a NULL investment_class is included; the class is compared
    normalised, `investment_class`), options contribute their underlying, zero quantities and
    deleted rows ignored (SPEC §5.2). Reads no numeric or date value into Python, so a row that
    fails its portfolio (`load_positions`) does not stop the sync for everyone else."""
    query = (
        select(Position.symbol, Position.underlying_symbol, Position.investment_class, Position.position_type)
        .join(Portfolio, Portfolio.id == Position.portfolio_id)
        .where(
            Portfolio.deleted_at.is_(None), Position.deleted_at.is_(None), Position.quantity != 0,
            Position.entry_date <= end,
            or_(Position.exit_date.is_(None), Position.exit_date > start),
        )
        .distinct()  # one row per (symbol, underlying, class, type): the books share symbols
    )
    if portfolio_ids:
        query = query.where(Position.portfolio_id.in_(list(portfolio_ids)))
    symbols = set()
    for symbol, underlying, raw_class, position_type in session.execute(query):
        asset_class = investment_class(raw_class)
        if asset_class == PRIVATE:
            continue
        option = asset_class == OPTIONS or position_type.strip().upper() in OPTION_TYPES
        target = (underlying or option_root(symbol)) if option else symbol
        if target:
            symbols.add(target.strip().upper())
    return sorted(symbols)


def existing_price_dates(session: Session, symbols: Sequence[str], start: date,
                         end: date) -> dict[str, set[date]]:
    found: dict[str, set[date]] = {s: set() for s in symbols}
    query = select(MarketPrice.symbol, MarketPrice.date).where(
        MarketPrice.symbol.in_(list(symbols)), MarketPrice.date >= start, MarketPrice.date <= end)
    for symbol, day in session.execute(query):
        found[symbol].add(day)
    return found


def session_closes(session: Session, symbols: Iterable[str], as_of: date, sessions: int) -> pd.DataFrame:
    """Closes over the `sessions` NYSE sessions ending at `as_of`, indexed by every one of those
    sessions (NaN where a symbol has no row), one column per symbol. Nothing after `as_of`."""
    days = calendar.sessions_back(as_of, sessions)
    return load_closes(session, symbols, days[0], as_of).reindex(days)


def load_closes(session: Session, symbols: Iterable[str], start: date, end: date) -> pd.DataFrame:
    """Closes dated in [start, end] — never after `end` (no look-ahead) — as a DataFrame indexed
    by date (ascending, `datetime.date`), one float column per requested symbol (all-NaN if it
    has no rows). Stored values are read as the database casts them to a float (a non-positive
    or non-finite close stays as it is, for `calculations.prices.usable_closes` to see).

    Read as arrays, not row objects (`closes_arrays`), then placed with one numpy scatter."""
    wanted = sorted(set(symbols))
    arrays = closes_arrays(session, wanted, start, end)
    if arrays.days.size == 0:
        return pd.DataFrame(columns=wanted, dtype=float)
    offsets, rows = np.unique(arrays.days, return_inverse=True)
    values = np.full((offsets.size, len(wanted)), np.nan)
    values[rows, arrays.codes] = arrays.closes
    start_day = np.datetime64(start, "D")
    index = pd.Index((start_day + offsets).astype(object), dtype=object)  # datetime.date values
    return pd.DataFrame(values, index=index, columns=wanted)


@dataclass(frozen=True)
class ClosesArrays:
    """Stored closes as three parallel arrays, one element per `market_prices` row."""

    days: np.ndarray  # int64: days after the read's `start`
    codes: np.ndarray  # int64: position of the row's symbol in the requested (sorted) symbols
    closes: np.ndarray  # float64: the close as the database casts it (bad values kept)


# PostgreSQL: every close as one 16-byte record (int4 day offset, int4 symbol position, float8
# close; big-endian, the types' binary send formats), all aggregated server-side into ONE bytea
# value — one row to fetch whatever the window's size, parsed by one numpy view.
_PG_RECORD = np.dtype([("day", ">i4"), ("code", ">i4"), ("close", ">f8")])
_PG_CLOSES = ("SELECT string_agg(int4send((m.date - %s::date)::int4) || int4send((w.i - 1)::int4)"
              " || float8send(m.close::float8), ''::bytea)"
              " FROM market_prices m JOIN unnest(%s::text[]) WITH ORDINALITY AS w(symbol, i)"
              " ON m.symbol = w.symbol WHERE m.date >= %s AND m.date <= %s AND m.close IS NOT NULL")
# one number per (day, symbol): day offset × symbol count + symbol position (exact in a float64)
_SQLITE_CLOSES = ("SELECT CAST(julianday(m.date) - julianday(?) AS INTEGER) * ? + CAST(w.key AS INTEGER),"
                  " CAST(m.close AS REAL) FROM json_each(?) AS w JOIN market_prices AS m"
                  " ON m.symbol = w.value WHERE m.date >= ? AND m.date <= ? AND m.close IS NOT NULL")


def closes_arrays(session: Session, symbols: Sequence[str], start: date, end: date) -> ClosesArrays:
    """The closes of `symbols` dated in [start, end] in one statement, straight into numpy: a
    one bytea of fixed-width records on PostgreSQL, one fetch of (day and symbol code packed, close) numbers on SQLite —
    no date, text or row object per price. A NULL close is left out (read as missing)."""
    empty = ClosesArrays(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    if not symbols:
        return empty
    driver = session.connection().connection.driver_connection
    if session.get_bind().dialect.name == "postgresql":
        with driver.cursor(binary=True) as cursor:
            cursor.execute(_PG_CLOSES, (start, list(symbols), start, end))
            data = cursor.fetchone()[0]
        return _parse_pg_closes(data or b"")
    cursor = driver.cursor()
    try:
        cursor.execute(_SQLITE_CLOSES, (start.isoformat(), len(symbols), json.dumps(list(symbols)),
                                        start.isoformat(), end.isoformat()))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    pairs = np.fromiter(itertools.chain.from_iterable(rows), dtype=float, count=2 * len(rows)).reshape(-1, 2)
    days, codes = np.divmod(pairs[:, 0].astype(np.int64), len(symbols))
    return ClosesArrays(days, codes, pairs[:, 1].copy())


def _parse_pg_closes(data: bytes) -> ClosesArrays:
    """The 16-byte (int4 day, int4 code, float8 close) records of `_PG_CLOSES` as arrays."""
    if len(data) % _PG_RECORD.itemsize:
        raise ValueError(f"closes read: {len(data)} bytes is not a whole number of "
                         f"{_PG_RECORD.itemsize}-byte records")
    rows = np.frombuffer(data, dtype=_PG_RECORD)
    return ClosesArrays(rows["day"].astype(np.int64), rows["code"].astype(np.int64), rows["close"].astype(float))


def prior_snapshots(session: Session, portfolio_ids: Sequence[uuid.UUID],
                    before: date) -> dict[uuid.UUID, PriorSnapshot | InvalidInputRow]:
    """Each portfolio's latest snapshot dated before `before` (portfolios without one absent;
    one whose values cannot be read maps to its InvalidInputRow)."""
    if not portfolio_ids:
        return {}
    snap = PortfolioSnapshot
    latest = (select(snap.portfolio_id, func.max(snap.snapshot_date).label("d"))
              .where(snap.portfolio_id.in_(list(portfolio_ids)), snap.snapshot_date < before)
              .group_by(snap.portfolio_id).subquery())
    rows = session.execute(select(snap.portfolio_id, _as_text(snap.snapshot_date), _raw(snap.total_value),
                                  _raw(snap.cumulative_pnl))
                           .join(latest, and_(snap.portfolio_id == latest.c.portfolio_id,
                                              snap.snapshot_date == latest.c.d)))
    found: dict[uuid.UUID, PriorSnapshot | InvalidInputRow] = {}
    for pid, day, total, cumulative in rows:
        try:
            found[pid] = PriorSnapshot(_date(day, "snapshot_date"), _number(total, "total_value"),
                                       _number(cumulative, "cumulative_pnl"))
        except _BadValue as bad:
            found[pid] = InvalidInputRow(f"portfolio_snapshots {pid} {day}", *bad.args)
    return found


PARENT_CHECK_BATCH = 5_000  # ids per statement (SQLite allows 32,766 parameters)


def deleted_parents(session: Session, portfolio_ids: Iterable[uuid.UUID], position_ids: Iterable[uuid.UUID],
                    scenario_ids: Iterable[str]) -> list[str]:
    """Which of these portfolios, positions and stress scenarios no longer exist (each named,
    e.g. `portfolio <id>`), holding those that do against deletion until the transaction ends,
    so result rows naming them never outlive them (the result tables have no foreign keys; the
    delete triggers remove a parent's rows). PostgreSQL: `FOR KEY SHARE`, the lock a foreign-key
    check takes — a concurrent DELETE waits for this commit and its trigger then sees the rows.
    SQLite: call it after the transaction's first write, which already keeps every other writer
    out until the transaction ends."""
    lock = session.get_bind().dialect.name == "postgresql"
    gone: list[str] = []
    for label, column, wanted in (("portfolio", Portfolio.id, set(portfolio_ids)),
                                  ("position", Position.id, set(position_ids)),
                                  ("stress scenario", StressScenario.scenario_id, set(scenario_ids))):
        ordered = sorted(wanted, key=str)
        found: set[Any] = set()
        for start in range(0, len(ordered), PARENT_CHECK_BATCH):
            query = select(column).where(column.in_(ordered[start:start + PARENT_CHECK_BATCH]))
            if lock:
                query = query.with_for_update(read=True, key_share=True)
            found.update(session.scalars(query))
        gone.extend(f"{label} {value}" for value in ordered if value not in found)
    return gone


def rechain_later_snapshots_of(session: Session, written: dict[uuid.UUID, PriorSnapshot]) -> int:
    """Re-chain, for each portfolio of `written`, every stored snapshot dated after its snapshot
    just written in this transaction, so each series equals one built from scratch (SPEC §6.7):
    each later row's `daily_return`, `cumulative_pnl` and chain flag are recomputed from its own
    `daily_pnl` and `total_value`. One SELECT for all the portfolios and one UPDATE statement
    (executemany) for the rows whose values change. Returns that count."""
    if not written:
        return 0
    snap = PortfolioSnapshot
    rows = session.execute(
        select(snap.portfolio_id, snap.snapshot_date, snap.total_value, snap.daily_pnl, snap.daily_return,
               snap.cumulative_pnl, snap.data_quality)
        .where(snap.portfolio_id.in_(list(written)),
               snap.snapshot_date > min(w.snapshot_date for w in written.values()))
        .order_by(snap.portfolio_id, snap.snapshot_date)).all()
    later: dict[uuid.UUID, list[Any]] = {}
    for r in rows:
        if r.snapshot_date > written[r.portfolio_id].snapshot_date:
            later.setdefault(r.portfolio_id, []).append(r)
    changes = []
    for portfolio_id, series in later.items():
        links = [ChainLink(r.snapshot_date, calendar.previous_session(r.snapshot_date), float(r.total_value),
                           float(r.daily_pnl)) for r in series]
        for row, chained in zip(series, rechain(written[portfolio_id], links), strict=True):
            quality = dict(row.data_quality or {})
            kept = [f for f in quality.get("flags", []) if f not in CHAIN_FLAGS]
            flags = ([chained.chain_flag] if chained.chain_flag else []) + kept
            if (row.daily_return == chained.daily_return and row.cumulative_pnl == chained.cumulative_pnl
                    and quality.get("flags", []) == flags):
                continue
            quality["flags"] = flags
            changes.append({"b_portfolio": portfolio_id, "b_date": row.snapshot_date,
                            "b_return": chained.daily_return, "b_cumulative": chained.cumulative_pnl,
                            "b_quality": quality})
    if changes:
        table = snap.__table__
        session.connection().execute(
            update(table).where(table.c.portfolio_id == bindparam("b_portfolio", type_=table.c.portfolio_id.type),
                                table.c.snapshot_date == bindparam("b_date", type_=table.c.snapshot_date.type))
            .values(daily_return=bindparam("b_return", type_=table.c.daily_return.type),
                    cumulative_pnl=bindparam("b_cumulative", type_=table.c.cumulative_pnl.type),
                    data_quality=bindparam("b_quality", type_=table.c.data_quality.type)),
            changes)
    return len(changes)


def portfolios_with_snapshot(session: Session, day: date) -> set[uuid.UUID]:
    """Ids of portfolios that already have a snapshot (i.e. complete results) for `day`."""
    return set(session.scalars(select(PortfolioSnapshot.portfolio_id).where(
        PortfolioSnapshot.snapshot_date == day)))


def last_complete_sessions(session: Session) -> dict[uuid.UUID, date | None]:
    """Every active portfolio → the latest date it has complete results (a snapshot) for, None
    when it has none; one query."""
    rows = session.execute(
        select(Portfolio.id, func.max(PortfolioSnapshot.snapshot_date))
        .outerjoin(PortfolioSnapshot, PortfolioSnapshot.portfolio_id == Portfolio.id)
        .where(Portfolio.deleted_at.is_(None)).group_by(Portfolio.id).order_by(Portfolio.id))
    return {pid: (_date(day, "snapshot_date") if isinstance(day, str) else day) for pid, day in rows}


def sessions_missing_results(session: Session, days: Sequence[date],
                             only: Sequence[uuid.UUID] | None = None) -> list[date]:
    """Which of `days` lack complete results (a snapshot) for at least one active portfolio (of
    `only`, when given), ascending; two queries whatever the number of portfolios."""
    active = select(Portfolio.id).where(Portfolio.deleted_at.is_(None))
    if only:
        active = active.where(Portfolio.id.in_(list(only)))
    wanted = session.scalar(select(func.count()).select_from(active.subquery()))
    if not days or not wanted:
        return []
    counts = dict(session.execute(
        select(PortfolioSnapshot.snapshot_date, func.count(PortfolioSnapshot.portfolio_id.distinct()))
        .where(PortfolioSnapshot.snapshot_date.in_(list(days)), PortfolioSnapshot.portfolio_id.in_(active))
        .group_by(PortfolioSnapshot.snapshot_date)).all())
    return sorted(d for d in days if counts.get(d, 0) < wanted)


def portfolios_with_job_records(session: Session, run_id: uuid.UUID, as_of: date,
                                portfolio_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these portfolios already have a job record of run `run_id` for `as_of`."""
    return set(session.scalars(select(BatchJobResult.portfolio_id).distinct().where(
        BatchJobResult.run_id == run_id, BatchJobResult.as_of_date == as_of,
        BatchJobResult.portfolio_id.in_(list(portfolio_ids)))))


def stored_symbol_betas(session: Session, symbols: Sequence[str], as_of: date) -> list[SymbolFactorBeta]:
    """The `symbol_factor_betas` rows already stored for `as_of` for these symbols."""
    if not symbols:
        return []
    return list(session.scalars(select(SymbolFactorBeta).where(
        SymbolFactorBeta.as_of_date == as_of, SymbolFactorBeta.symbol.in_(list(symbols)))))


def latest_marks(session: Session, symbols: Iterable[str],
                 as_of: date) -> dict[str, tuple[date, float] | InvalidInputRow]:
    """The latest price row on or before `as_of` for each symbol that has one, at any age and on
    any date (private marks need not fall on sessions). A row whose close is not a finite
    number maps to its InvalidInputRow (it fails the portfolios holding the symbol)."""
    wanted = sorted(set(symbols))
    if not wanted:
        return {}
    latest = (select(MarketPrice.symbol, func.max(MarketPrice.date).label("d"))
              .where(MarketPrice.symbol.in_(wanted), MarketPrice.date <= as_of)
              .group_by(MarketPrice.symbol).subquery())
    rows = session.execute(select(MarketPrice.symbol, _as_text(MarketPrice.date), _raw(MarketPrice.close)).join(
        latest, and_(MarketPrice.symbol == latest.c.symbol, MarketPrice.date == latest.c.d)))
    found: dict[str, tuple[date, float] | InvalidInputRow] = {}
    for symbol, day, close in rows:
        try:
            found[symbol] = (_date(day, "date"), _number(close, "close"))
        except _BadValue as bad:
            found[symbol] = InvalidInputRow(f"market_prices {symbol} {day}", *bad.args)
    return found
