"""The binary COPY stream built column-wise with numpy (`db.binary_copy_payload`) against two
independent encoders: psycopg's own row-by-row `Copy.write_row` (captured into a buffer) and
PostgreSQL's `COPY ... TO STDOUT (FORMAT BINARY)` of the rows it stored; plus 100k-row round
trips, and the same rows through `bulk_insert` on both databases."""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Iterator
from datetime import date

import numpy as np
import psycopg
import pytest
from psycopg.copy import Copy, FileWriter
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from batch import db
from models import SymbolFactorBeta

TYPES = ["uuid", "date", "float8", "float4", "int2", "int4", "int8", "bool", "text", "text"]
COLUMNS = "u uuid, d date, f8 float8, f4 float4, i2 int2, i4 int4, i8 int8, b bool, t text, j json"
NAMES = ["u", "d", "f8", "f4", "i2", "i4", "i8", "b", "t", "j"]
U1 = uuid.UUID("12345678-1234-5678-1234-567812345678")
U_MAX = uuid.UUID(int=2 ** 128 - 1)

# columns as callers give them: None, NaN and ±inf, a UUID as text, truthy non-bools, a non-string
# in a text column, numpy scalars, dates before 2000, empty and non-ASCII text
GIVEN = [
    [U1, None, "00000000-0000-0000-0000-000000000001", U_MAX, uuid.UUID(int=0)],
    [date(1999, 12, 31), date(1970, 1, 1), date(2000, 1, 1), date(1, 1, 1), date(9999, 12, 31)],
    [1.5, math.nan, math.inf, -0.0, 5e-324],
    [0.1, None, -math.inf, 3.4e38, np.float64(-2.5)],
    [-32768, None, 32767, 0, np.int16(-1)],
    [-2 ** 31, None, 2 ** 31 - 1, 0, np.int64(7)],
    [-2 ** 63, None, 2 ** 63 - 1, 0, 1],
    [True, None, 0, "yes", np.bool_(True)],
    ["", None, "héllo ✓ 東京", 42, "tab\tnew\nline\\"],
    ['{"a":null}', None, "[]", "null", '{"k":"é"}'],
]
# the same rows written by hand as psycopg's binary dumpers take them (NULL for non-finite
# floats, a UUID object, a real bool, str of a non-string)
EXPECTED = [
    (U1, date(1999, 12, 31), 1.5, 0.1, -32768, -2 ** 31, -2 ** 63, True, "", '{"a":null}'),
    (None, date(1970, 1, 1), None, None, None, None, None, None, None, None),
    (uuid.UUID(int=1), date(2000, 1, 1), None, None, 32767, 2 ** 31 - 1, 2 ** 63 - 1, False, "héllo ✓ 東京", "[]"),
    (U_MAX, date(1, 1, 1), -0.0, 3.4e38, 0, 0, 0, True, "42", "null"),
    (uuid.UUID(int=0), date(9999, 12, 31), 5e-324, -2.5, -1, 7, 1, True, "tab\tnew\nline\\", '{"k":"é"}'),
]


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgresql)])
def pg(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    """A psycopg connection to the migrated PostgreSQL test database (temporary tables only)."""
    url = make_url(request.getfixturevalue("postgres_ready"))
    conn = psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                           dbname=url.database)
    try:
        yield conn
    finally:
        conn.close()


def psycopg_payload(conn: psycopg.Connection, types: list[str], rows: list[tuple]) -> bytes:
    """What psycopg's `Copy.write_row` sends for `rows` with `set_types(types)`, captured."""
    buffer = io.BytesIO()
    with Copy(conn.cursor(), binary=True, writer=FileWriter(buffer)) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
    return buffer.getvalue()


def copy_in_and_back(conn: psycopg.Connection, payload: bytes, columns: str, select_list: str,
                     order: str) -> tuple[list[tuple], bytes]:
    """COPY `payload` into a new temporary table, then its rows as selected (in binary: a float4
    read back is the float32 stored) and the binary COPY PostgreSQL writes of them (in `order`)."""
    with conn.cursor(binary=True) as cur:
        cur.execute("DROP TABLE IF EXISTS copied")
        cur.execute(f"CREATE TEMPORARY TABLE copied ({columns})")
        with cur.copy("COPY copied FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(payload)
        rows = cur.execute(f"SELECT {select_list} FROM copied ORDER BY {order}").fetchall()
        out = bytearray()
        with cur.copy(f"COPY (SELECT * FROM copied ORDER BY {order}) TO STDOUT (FORMAT BINARY)") as copy:
            for block in copy:
                out += block
    return rows, bytes(out)


def assert_same_rows(got: list, expected: list) -> None:
    """`got == expected`, reporting the first differing row (pytest's diff of 100k rows takes minutes)."""
    assert len(got) == len(expected)
    first = next((i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e), None)
    assert first is None, f"row {first}: {got[first]} != {expected[first]}"


def assert_same_bytes(got: bytes, expected: bytes) -> None:
    """`got == expected`, reporting where they first differ."""
    if got != expected:
        first = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))
        pytest.fail(f"{len(got)} vs {len(expected)} bytes, first difference at {first}: "
                    f"{got[max(first - 8, 0):first + 8]!r} vs {expected[max(first - 8, 0):first + 8]!r}")


def test_payload_equals_psycopgs_row_encoding_and_what_postgresql_stores(pg):
    payload = db.binary_copy_payload(TYPES, GIVEN, 5)
    assert_same_bytes(payload, psycopg_payload(pg, TYPES, EXPECTED))
    assert payload[:19] == b"PGCOPY\n\xff\r\n\x00" + bytes(8) and payload[-2:] == b"\xff\xff"
    # row 1 by hand: 10 fields; u NULL; d 4 bytes, 1970-01-01 = -10957 days = 0xffffd533; 8 NULLs
    assert b"\x00\x0a" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x04\xff\xff\xd5\x33" + b"\xff\xff\xff\xff" * 8 in payload
    numbered = db.binary_copy_payload(["int4"] + TYPES, [list(range(5))] + GIVEN, 5)  # n: the order back
    rows, written = copy_in_and_back(pg, numbered, "n int4, " + COLUMNS, ", ".join(NAMES[:-1]) + ", j::text", "n")
    float4 = [float(np.float32(0.1)), None, None, float(np.float32(3.4e38)), -2.5]  # what REAL keeps
    assert rows == [(*e[:3], f, *e[4:]) for e, f in zip(EXPECTED, float4, strict=True)]
    assert math.copysign(1.0, rows[3][2]) == -1.0  # -0.0 kept
    assert written == numbered


def test_payload_of_no_rows_and_of_one_null_row(pg):
    assert db.binary_copy_payload(["int4", "text"], [[], []], 0) == psycopg_payload(pg, ["int4", "text"], [])
    assert db.binary_copy_payload(["uuid", "float8"], [[None], [math.nan]], 1) == (
        b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\x00\x02" + b"\xff\xff\xff\xff" * 2 + b"\xff\xff")


def test_repeated_columns_encode_as_their_expanded_values(pg):
    """A run-length column (a group's constant) gives the bytes of its values written out."""
    counts = np.array([2, 0, 1, 3])
    values = [[U1, uuid.UUID(int=9), None, "00000000-0000-0000-0000-000000000002"],
              [date(1999, 1, 1), date(2000, 1, 1), None, date(2022, 12, 28)],
              ["ab", "x", None, "c✓d"], [1.5, 2.5, math.nan, -1.0]]
    expanded = [[v for v, c in zip(column, counts, strict=True) for _ in range(c)] for column in values]
    rows = [(U1, date(1999, 1, 1), "ab", 1.5)] * 2 + [(None, None, None, None)] + \
        [(uuid.UUID(int=2), date(2022, 12, 28), "c✓d", -1.0)] * 3
    types = ["uuid", "date", "text", "float8"]
    assert db.binary_copy_payload(types, [db.Repeated(v, counts) for v in values], 6) == \
        db.binary_copy_payload(types, expanded, 6) == psycopg_payload(pg, types, rows)


def test_long_texts_written_row_by_row_give_the_same_bytes(pg):
    """Texts averaging 64 bytes or more are copied one slice per row, shorter ones scattered by
    numpy: both give psycopg's bytes, NULLs and empty strings included."""
    rng = np.random.default_rng(3)
    letters = list("ab✓東\n\\ \"")
    for longest in (8, 400):
        texts = [None if i % 11 == 0 else "".join(rng.choice(letters, rng.integers(0, longest)))
                 for i in range(200)]
        numbers = list(range(200))
        assert_same_bytes(db.binary_copy_payload(["text", "int8", "text"], [texts, numbers, texts[::-1]], 200),
                          psycopg_payload(pg, ["text", "int8", "text"], list(zip(texts, numbers, texts[::-1],
                                                                                 strict=True))))


def test_hundred_thousand_mixed_rows_round_trip(pg):
    """100k rows of every type with NULLs, non-finite floats and text of every length: the same
    bytes as psycopg's, and PostgreSQL stores exactly the inputs."""
    n = 100_000
    rng = np.random.default_rng(11)
    null = rng.random((len(TYPES), n)) < 0.1
    ids = [uuid.UUID(int=int(a) << 64 | int(b)) for a, b in rng.integers(0, 2 ** 63, (n, 2), dtype=np.int64)]
    days = rng.integers(date(1, 1, 1).toordinal(), date(9999, 12, 31).toordinal() + 1, n)
    f8 = rng.normal(0, 1e6, n) * 10.0 ** rng.integers(-290, 290, n)
    special = rng.random(n) < 0.05
    f8[special] = rng.choice([math.nan, math.inf, -math.inf, -0.0], int(special.sum()))
    f4 = rng.normal(0, 1e3, n)
    letters = list("abcXYZ09 ,\"\\\t\n{}éß✓東京")
    text = ["".join(rng.choice(letters, rng.integers(0, 13))) for _ in range(n)]
    given = [ids, [date.fromordinal(int(d)) for d in days], f8, f4, rng.integers(-2 ** 15, 2 ** 15, n),
             rng.integers(-2 ** 31, 2 ** 31, n), rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64),
             rng.random(n) < 0.5, text, [f'{{"k":{i}}}' for i in range(n)]]
    given = [[None if null[j, i] else v for i, v in enumerate(column.tolist() if isinstance(column, np.ndarray)
                                                                else column)]
             for j, column in enumerate(given)]
    expected = [tuple(None if v is None or (j in (2, 3) and not math.isfinite(v)) else v
                      for j, v in enumerate(row)) for row in zip(*given, strict=True)]
    payload = db.binary_copy_payload(["int4"] + TYPES, [list(range(n))] + given, n)
    assert_same_bytes(payload, psycopg_payload(pg, ["int4"] + TYPES, [(i, *row) for i, row in enumerate(expected)]))
    rows, written = copy_in_and_back(pg, payload, "n int4, " + COLUMNS, ", ".join(NAMES[:-1]) + ", j::text", "n")
    assert_same_bytes(written, payload)
    stored_f4 = [None if v is None else float(np.float32(v)) for v in (row[3] for row in expected)]
    assert_same_rows(rows, [(*e[:3], f, *e[4:]) for e, f in zip(expected, stored_f4, strict=True)])


@pytest.mark.parametrize(("kind", "values", "message"), [
    ("int4", [1, 2 ** 31], "out of range for int4"),
    ("int2", [np.int64(-2 ** 15 - 1)], "out of range for int2"),
    ("int8", [1.5], "fractional value in an int8"),
    ("float4", [1e39], "out of range for float4"),
    ("numeric", [1.0], "type numeric is not encoded here"),
])
def test_payload_refuses_what_the_column_cannot_hold(kind, values, message):
    with pytest.raises(ValueError, match=message):
        db.binary_copy_payload([kind], [values], len(values))


def test_bulk_insert_of_hundred_thousand_rows_in_groups_stores_every_value(engine):
    """100k symbol_factor_betas rows in 200 groups (each with its own date and window as
    constants), by the job's write path: numpy-encoded binary COPY on PostgreSQL, executemany
    on SQLite. NaN and ±inf become NULL; a missing `capped` takes its default."""
    rng = np.random.default_rng(5)
    factors = ["Market", "Größe", "Value", "Momentum ✓"]
    groups, expected = [], {}
    for g in range(200):
        day, window = date.fromordinal(date(1990, 1, 1).toordinal() + g), 30 + g
        rows = []
        for i in range(500):
            beta = [1.0 / (i + 1), math.nan, math.inf, -0.0, float(rng.normal())][i % 5]
            row = {"symbol": f"S{i // 4}é", "factor": factors[i % 4], "beta": beta,
                   "std_error": None if i % 7 == 0 else i * 0.1, "observations": i, "quality_flag": "q" * (i % 9)}
            if i % 3:
                row["capped"] = bool(i % 2)
            rows.append(row)
            expected[(row["symbol"], row["factor"], day)] = (
                None if not math.isfinite(beta) else beta, row["std_error"], i, window, bool(i % 2) if i % 3 else False,
                "q" * (i % 9))
        groups.append(({"as_of_date": day, "window_days": window}, rows))
    with Session(engine) as s, s.begin():
        assert db.bulk_insert_groups(s, SymbolFactorBeta, groups) == 100_000
    with Session(engine) as s:
        stored = {(r.symbol, r.factor, r.as_of_date): (r.beta, r.std_error, r.observations, r.window_days, r.capped,
                                                       r.quality_flag)
                  for r in s.execute(select(SymbolFactorBeta.symbol, SymbolFactorBeta.factor,
                                            SymbolFactorBeta.as_of_date, SymbolFactorBeta.beta,
                                            SymbolFactorBeta.std_error, SymbolFactorBeta.observations,
                                            SymbolFactorBeta.window_days, SymbolFactorBeta.capped,
                                            SymbolFactorBeta.quality_flag))}
    assert_same_rows(sorted(stored.items()), sorted(expected.items()))
