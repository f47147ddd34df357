"""Compare every result table of two databases by natural key (issue #11).

    python scripts/compare_results.py URL_A URL_B [--rtol 1e-9] [--as-of YYYY-MM-DD]
                                      [--portfolio UUID] [--json]

URLs may mix SQLite and PostgreSQL. Each table is read with plain SQL by name, so
`pairwise_correlations` compares the same whether it is a table or a view over
`correlation_matrices`; a column `id` (a surrogate key) is never compared. Values are read into
one form on both databases first: UUIDs (PostgreSQL `uuid`, SQLite 32-hex text) as canonical
strings, dates as ISO strings, booleans as 0/1, JSON (PostgreSQL `json`, SQLite text) parsed.

Per table it reports the rows in A and in B, the keys only in A and only in B, the largest
relative difference |a − b| / max(|a|, |b|, 1e-300) over the numeric columns of rows present in
both (floats inside JSON by the same rule), NULL-versus-number mismatches (NULL vs NULL is equal)
and mismatches of the other columns (text exactly, JSON structurally). Exit 0 when every table
matches within --rtol, 1 otherwise, 2 on a usage or connection error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a plain checkout too

from sqlalchemy import inspect, text  # noqa: E402 - after the path set-up above
from sqlalchemy.exc import DBAPIError  # noqa: E402

from batch import db  # noqa: E402
from batch.errors import ConfigError, DatabaseUnavailable  # noqa: E402
from batch.settings import normalise_database_url  # noqa: E402
from models import Base  # noqa: E402

# table → natural key (SPEC §4): each result table's primary key, as the models declare it, plus
# the pairs the `pairwise_correlations` view (a table before migration 0003) unnests
_COMPARED = ("symbol_factor_betas", "position_factor_exposures", "portfolio_factor_exposures",
             "position_valuations", "position_greeks", "market_risk_results", "stress_test_results",
             "correlation_runs", "correlation_clusters", "factor_correlations", "portfolio_snapshots")
TABLES: dict[str, tuple[str, ...]] = {
    **{name: tuple(c.name for c in Base.metadata.tables[name].primary_key) for name in _COMPARED},
    "pairwise_correlations": ("portfolio_id", "as_of_date", "symbol_1", "symbol_2"),
}
SURROGATE = "id"
EXAMPLES = 5  # keys / mismatches listed per table
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class UsageError(Exception):
    """A bad argument or an unreachable database: one line, exit 2."""


@dataclass
class TableReport:
    """One table's comparison. `max_rel_diff` is over numeric columns and floats inside JSON of
    rows present in both databases (0.0 when there are none); `worst` names where it was."""

    table: str
    rows_a: int = 0
    rows_b: int = 0
    only_in_a: int = 0
    only_in_b: int = 0
    max_rel_diff: float = 0.0
    worst: str | None = None
    null_mismatches: int = 0
    value_mismatches: int = 0  # non-numeric columns (text exactly, JSON structurally)
    over_rtol: int = 0  # numeric values (and JSON floats) differing by more than rtol
    notes: list[str] = field(default_factory=list)  # missing table, columns only on one side, duplicates
    examples: list[str] = field(default_factory=list)

    def matches(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.null_mismatches or self.value_mismatches
                    or self.over_rtol or self.notes)


def normalise(value: Any) -> Any:
    """One form for a value read from either database (see the module docstring)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, memoryview | bytes):
        return bytes(value).hex()
    if isinstance(value, str):
        if _HEX32.match(value):
            return str(uuid.UUID(value))
        if value[:1] in ("{", "["):
            try:
                return json.loads(value)
            except ValueError:
                return value
    return value


def relative_difference(a: float, b: float) -> float:
    """|a − b| / max(|a|, |b|, 1e-300); equal infinities or NaNs are 0, one of them against
    anything else is infinite."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compare_json(a: Any, b: Any) -> tuple[bool, float]:
    """Structural equality of two parsed JSON values, floats compared by relative difference:
    (same structure and every non-number equal, largest relative difference of the numbers)."""
    if _is_number(a) and _is_number(b):
        return True, relative_difference(float(a), float(b))
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return False, 0.0
        worst, same = 0.0, True
        for k in a:
            s, d = compare_json(a[k], b[k])
            same, worst = same and s, max(worst, d)
        return same, worst
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return False, 0.0
        worst, same = 0.0, True
        for x, y in zip(a, b, strict=True):
            s, d = compare_json(x, y)
            same, worst = same and s, max(worst, d)
        return same, worst
    return type(a) is type(b) and a == b, 0.0


def read_table(engine, table: str, key: tuple[str, ...], as_of: date | None,
               portfolio: uuid.UUID | None) -> tuple[list[str], dict[tuple, dict[str, Any]], int, int] | None:
    """(columns without `id`, key → normalised row, rows read, duplicate keys), or None when the
    database has no table or view of that name."""
    names = set(inspect(engine).get_table_names()) | set(inspect(engine).get_view_names())
    if table not in names:
        return None
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        columns = [c for c in conn.execute(text(f"SELECT * FROM {table} WHERE 1 = 0")).keys()]
        where, params = [], {}
        day_column = next((c for c in ("as_of_date", "snapshot_date") if c in columns), None)
        if as_of is not None and day_column:
            where.append(f"{day_column} = :day")
            params["day"] = as_of if postgres else as_of.isoformat()
        if portfolio is not None and "portfolio_id" in columns:
            where.append("portfolio_id = :pid")
            params["pid"] = portfolio if postgres else portfolio.hex
        sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
        result = conn.execute(text(sql), params)
        kept = [c for c in result.keys() if c != SURROGATE]
        rows: dict[tuple, dict[str, Any]] = {}
        count = duplicates = 0
        for raw in result:
            row = {c: normalise(v) for c, v in zip(result.keys(), raw, strict=True) if c != SURROGATE}
            k = tuple(row.get(c) for c in key)
            count += 1
            if k in rows:
                duplicates += 1
            rows[k] = row
    return kept, rows, count, duplicates


def compare_table(engine_a, engine_b, table: str, rtol: float, as_of: date | None,
                  portfolio: uuid.UUID | None) -> TableReport:
    key = TABLES[table]
    report = TableReport(table)
    a = read_table(engine_a, table, key, as_of, portfolio)
    b = read_table(engine_b, table, key, as_of, portfolio)
    if a is None or b is None:
        if a is not b:
            report.notes.append(f"no table or view {table} in {'A' if a is None else 'B'}")
        return report
    (cols_a, rows_a, report.rows_a, dup_a), (cols_b, rows_b, report.rows_b, dup_b) = a, b
    for side, dup in (("A", dup_a), ("B", dup_b)):
        if dup:
            report.notes.append(f"{dup} duplicate natural keys in {side}")
    for side, extra in (("A", sorted(set(cols_a) - set(cols_b))), ("B", sorted(set(cols_b) - set(cols_a)))):
        if extra:
            report.notes.append(f"columns only in {side}: {', '.join(extra)}")
    only_a, only_b = rows_a.keys() - rows_b.keys(), rows_b.keys() - rows_a.keys()
    report.only_in_a, report.only_in_b = len(only_a), len(only_b)
    report.examples += [f"only in A: {_key_text(key, k)}" for k in sorted(only_a, key=str)[:EXAMPLES]]
    report.examples += [f"only in B: {_key_text(key, k)}" for k in sorted(only_b, key=str)[:EXAMPLES]]
    columns = [c for c in cols_a if c in set(cols_b) and c not in key]
    for k in sorted(rows_a.keys() & rows_b.keys(), key=str):
        ra, rb = rows_a[k], rows_b[k]
        for c in columns:
            va, vb = ra[c], rb[c]
            where = f"{_key_text(key, k)} {c}"
            if va is None and vb is None:
                continue
            if va is None or vb is None:
                if _is_number(va) or _is_number(vb):
                    report.null_mismatches += 1
                else:
                    report.value_mismatches += 1
                _example(report, f"{where}: {va!r} vs {vb!r}")
                continue
            if _is_number(va) and _is_number(vb):
                diff = relative_difference(float(va), float(vb))
            elif isinstance(va, dict | list) or isinstance(vb, dict | list):
                same, diff = compare_json(va, vb)
                if not same:
                    report.value_mismatches += 1
                    _example(report, f"{where}: JSON differs: {json.dumps(va)[:200]} vs {json.dumps(vb)[:200]}")
                    continue
            else:
                if va != vb:
                    report.value_mismatches += 1
                    _example(report, f"{where}: {va!r} vs {vb!r}")
                continue
            if diff > report.max_rel_diff:
                report.max_rel_diff, report.worst = diff, where
            if diff > rtol:
                report.over_rtol += 1
                _example(report, f"{where}: {va!r} vs {vb!r} (relative difference {diff:.3g})")
    return report


def _key_text(key: tuple[str, ...], values: tuple) -> str:
    return "(" + ", ".join(f"{c}={v}" for c, v in zip(key, values, strict=True)) + ")"


def _example(report: TableReport, line: str) -> None:
    if len(report.examples) < 2 * EXAMPLES:
        report.examples.append(line)


def connect(url: str, side: str):
    """An engine on an existing database (a missing SQLite file is an error, never created)."""
    url = normalise_database_url(url, source=f"database {side}")
    engine = db.make_engine(url, create=False)
    try:
        db.check_reachable(engine)
    except DatabaseUnavailable as exc:
        engine.dispose()
        raise UsageError(f"database {side}: {exc}") from None
    return engine


def compare(url_a: str, url_b: str, rtol: float = 1e-9, as_of: date | None = None,
            portfolio: uuid.UUID | None = None) -> list[TableReport]:
    engine_a = connect(url_a, "A")
    try:
        engine_b = connect(url_b, "B")
        try:
            return [compare_table(engine_a, engine_b, t, rtol, as_of, portfolio) for t in TABLES]
        except DBAPIError as exc:
            raise UsageError(f"reading the results failed: {db.describe_error(exc)}") from None
        finally:
            engine_b.dispose()
    finally:
        engine_a.dispose()


def print_reports(reports: list[TableReport], rtol: float) -> None:
    header = f"{'table':<28}{'rows A':>9}{'rows B':>9}{'only A':>8}{'only B':>8}{'max rel diff':>14}" \
             f"{'NULL≠':>7}{'other≠':>8}  status"
    print(header)
    for r in reports:
        print(f"{r.table:<28}{r.rows_a:>9}{r.rows_b:>9}{r.only_in_a:>8}{r.only_in_b:>8}{r.max_rel_diff:>14.3g}"
              f"{r.null_mismatches:>7}{r.value_mismatches:>8}  {'ok' if r.matches() else 'DIFFERENT'}")
    for r in reports:
        for line in r.notes + r.examples:
            print(f"  {r.table}: {line}")
    worst = max(reports, key=lambda r: r.max_rel_diff)
    print(f"largest relative difference {worst.max_rel_diff:.3g}" + (f" ({worst.table} {worst.worst})"
                                                                    if worst.worst else "") + f"; rtol {rtol:g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url_a", help="database A (SQLite or PostgreSQL URL)")
    parser.add_argument("url_b", help="database B")
    parser.add_argument("--rtol", type=float, default=1e-9, help="largest relative difference accepted")
    parser.add_argument("--as-of", type=date.fromisoformat, help="only this as-of (snapshot) date")
    parser.add_argument("--portfolio", type=uuid.UUID, help="only this portfolio (tables that have one)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    if not (args.rtol >= 0):
        parser.error(f"--rtol must be ≥ 0, got {args.rtol}")
    try:
        reports = compare(args.url_a, args.url_b, args.rtol, args.as_of, args.portfolio)
    except (UsageError, ConfigError) as exc:
        print(f"compare_results: error: {exc}", file=sys.stderr)
        return 2
    same = all(r.matches() for r in reports)
    print_reports(reports, args.rtol)
    if args.json:
        print(json.dumps({"match": same, "rtol": args.rtol,
                          "max_rel_diff": max(r.max_rel_diff for r in reports),
                          "tables": {r.table: {k: v for k, v in asdict(r).items() if k != "table"}
                                     for r in reports}}, default=str))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
