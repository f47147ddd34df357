"""Database plumbing: engine, migrations, the upsert helper and the run lock (SPEC §4, §7)."""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import operator
import os
import socket
import sqlite3
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Engine, Float, Numeric, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

import batch.migrations
from batch.errors import DatabaseUnavailable, LockHeld, LockLost
from batch.redact import redact

# pg_try_advisory_lock key: a fixed 64-bit number private to this job.
ADVISORY_LOCK_KEY = 0x5167_6D61_5369_6768 & 0x7FFF_FFFF_FFFF_FFFF
# held shared by each write transaction from its lock check to its commit (LockRef.confirm)
FENCE_LOCK_KEY = ADVISORY_LOCK_KEY + 1
LOCK_WAIT_SECONDS = 30  # a new run's wait for the last commits of a run that lost the lock
UPSERT_CHUNK_ROWS = 500
# what a failing database raises: through SQLAlchemy, or from the drivers used directly (COPY)
DATABASE_ERRORS = (SQLAlchemyError, psycopg.Error, sqlite3.Error)


def compact_json(value: Any) -> str:
    """The JSON text every JSON column stores: no spaces after separators (job records, SPEC §8,
    are sized by these bytes)."""
    return json.dumps(value, separators=(",", ":"))


# numpy integer and boolean scalars (what engines often produce) are stored by sqlite3 as BLOBs
# unless adapted: store them as the Python int they are (numpy floats are Python floats already)
for _numpy_type in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_):
    sqlite3.register_adapter(_numpy_type, int)


def make_engine(database_url: str, *, create: bool = True) -> Engine:
    """Create the engine. On SQLite: real transactions with SAVEPOINT support, foreign keys on,
    WAL journal and a busy timeout so the platform can read while the job writes.

    `create=False`: a SQLite file that does not exist is never created — connections open it in
    SQLite's `mode=rw`, so connecting fails (`check_reachable` says the file does not exist)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=compact_json)
        path = sqlite_file(url)
        if not create and path is not None:
            @event.listens_for(engine, "do_connect")
            def _sqlite_no_create(_dialect: Any, _record: Any, cargs: list, cparams: dict) -> None:
                cargs[:] = [f"file:{quote(str(path))}?mode=rw"]
                cparams["uri"] = True

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN (pysqlite savepoint fix)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:  # option sqlite_begin="IMMEDIATE": the write lock at once
            conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', '')}".strip())

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10},
                         json_serializer=compact_json)


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (relative to the working directory when the URL's path is);
    None for another database or an in-memory one."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def describe(engine: Engine) -> str:
    """Where the database is, without credentials (for messages and logs)."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return f"sqlite file {url.database}"
    return f"{url.get_backend_name()} at {url.host or 'localhost'}:{url.port or 5432}/{url.database}"


def check_reachable(engine: Engine) -> None:
    """Open one connection. Raises DatabaseUnavailable with a one-line, password-free message."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        path = sqlite_file(engine.url)
        if path is not None and not path.exists():
            raise DatabaseUnavailable(f"{describe(engine)} does not exist: check DATABASE_URL, or create it "
                                      "with `sigmasight-batch init-db`") from None
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        password = engine.url.password
        if password:
            first_line = first_line.replace(str(password), "***")
        raise DatabaseUnavailable(f"cannot connect to {describe(engine)}: {first_line}") from None


def describe_error(exc: BaseException) -> str:
    """One line for an error: its type and the first line of its message (a driver error's own
    message, without SQLAlchemy's statement and parameters)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return redact(f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(batch.migrations.__file__).parent))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "no migrations found in batch/migrations/versions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(engine: Engine) -> bool:
    """True when the database has no tables at all (a brand-new embedded file)."""
    return not inspect(engine).get_table_names()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to `revision` (head: what `init-db` does)."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo the migrations after `revision`, in one transaction (developers and tests)."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def create_if_empty(engine: Engine) -> bool:
    """Apply every migration if the database has no tables (a brand-new embedded file); return
    whether it did. Concurrent first starts are safe: on SQLite the check and the migration run in
    one `BEGIN IMMEDIATE` transaction, so one process creates the schema while the others wait for
    the write lock (the busy timeout) and then find the tables there."""
    if not is_empty(engine):  # the common case, decided without taking the write lock
        return False
    cfg = _alembic_config()
    with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
        if inspect(conn).get_table_names():
            return False
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return True


def require_current_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseUnavailable(
            f"{describe(engine)} is at migration {current or 'none'}, expected {head}: "
            "run `sigmasight-batch init-db`"
        )


def write_session(engine: Engine) -> Session:
    """A session for a transaction that reads, then writes. On SQLite (WAL) its BEGIN takes the
    write lock at once: a deferred read transaction that later writes fails at once with
    "database is locked" when another connection holds or has used the write lock meanwhile
    (SQLite does not wait in that case). Elsewhere a plain session."""
    return Session(engine.execution_options(sqlite_begin="IMMEDIATE"))


def upsert(session: Session, table: Any, rows: Sequence[dict[str, Any]], key: Sequence[str]) -> int:
    """Insert `rows` into `table` (an ORM class or Table), updating every non-key column on a
    natural-key conflict. Uses the dialect's native ON CONFLICT. Returns the row count."""
    if not rows:
        return 0
    table = getattr(table, "__table__", table)
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"upsert is implemented for PostgreSQL and SQLite, not {dialect}")
    for start in range(0, len(rows), UPSERT_CHUNK_ROWS):
        chunk = rows[start:start + UPSERT_CHUNK_ROWS]
        stmt = insert(table).values(list(chunk))
        updated = {c: stmt.excluded[c] for c in chunk[0] if c not in key and c != "id"}
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=updated) if updated \
            else stmt.on_conflict_do_nothing(index_elements=list(key))
        session.execute(stmt)
    return len(rows)


def jsonable(value: Any) -> Any:
    """`value` made JSON-safe: non-finite floats → None, dates → ISO strings, UUIDs → str,
    numpy scalars → Python numbers, mapping keys → str (through dicts, lists and tuples)."""
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return jsonable(value.item())
    return value


def json_text(value: Any) -> str:
    """`value` as JSON text, with `jsonable`'s conversions. Fast path: one `json.dumps`; only a
    value it refuses (NaN, a date, a UUID key...) takes the recursive conversion. An empty list
    (most positions' flags) is the constant "[]"."""
    if type(value) is list and not value:
        return "[]"
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps(jsonable(value), allow_nan=False, separators=(",", ":"))


def bulk_insert(session: Session, table: Any, rows: Sequence[dict[str, Any]],
                constants: dict[str, Any] | None = None) -> int:
    """Insert `rows` (column → value; a missing column takes its scalar default, else NULL) with
    the `constants` columns set on every row, inside the session's transaction, by the dialect's
    fastest path: `COPY` on PostgreSQL, one `executemany` elsewhere. Non-finite floats are stored
    as NULL, in numeric columns and inside JSON documents alike. Returns the row count."""
    return bulk_insert_groups(session, table, [(constants or {}, rows)])


def bulk_insert_groups(session: Session, table: Any,
                       groups: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]]]]) -> int:
    """`bulk_insert` of several groups of rows in one statement (one COPY on PostgreSQL, one
    `executemany` elsewhere): each (constants, rows) group has its own `constants` columns (e.g.
    one unit's portfolio_id and date); every group must set the same constant columns.

    On PostgreSQL the path is chosen per table: when every column's type is one
    `binary_copy_payload` encodes (`NUMPY_COPY_TYPES`: uuid, date, floats, ints, bool, text and
    json as text) the rows are turned into columns (one list per column; a constant column is
    each group's value, encoded once and repeated) and the binary COPY stream is built with numpy
    and sent as one block; otherwise (numeric, timestamps: binary COPY; jsonb and other types:
    text COPY) psycopg encodes row by row."""
    groups = [(constants, rows) for constants, rows in groups if rows]
    if not groups:
        return 0
    table = getattr(table, "__table__", table)
    first_constants, first_rows = groups[0]
    constant_names = set(first_constants)
    if any(set(constants) != constant_names for constants, _ in groups):
        raise ValueError(f"bulk insert into {table.name}: the groups set different constant columns")
    columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True
                                                 and c.name not in first_rows[0] and c.name not in constant_names)]
    names = [c.name for c in columns]
    default = [c.default.arg if c.default is not None and c.default.is_scalar else None for c in columns]
    from_row = [c.name not in constant_names for c in columns]
    numeric = [i for i, c in enumerate(columns) if isinstance(c.type, (Float, Numeric))]
    documents = [i for i, c in enumerate(columns) if isinstance(c.type, JSON)]
    postgres = session.get_bind().dialect.name == "postgresql"

    def values(row: dict[str, Any], fill: list[Any]) -> list[Any]:
        out = [row.get(n, f) if r else f for n, f, r in zip(names, fill, from_row, strict=True)]
        for i in numeric:
            v = out[i]
            if isinstance(v, float) and not math.isfinite(v):
                out[i] = None
        for i in documents:  # JSON None is stored as JSON null, as SQLAlchemy's JSON type does
            out[i] = json_text(out[i]) if postgres else jsonable(out[i])
        return out

    def filled(constants: dict[str, Any]) -> list[Any]:
        return [constants[n] if n in constants else d for n, d in zip(names, default, strict=True)]

    count = 0
    if postgres:
        binary = _binary_copy_types(columns, session.get_bind().dialect)
        count = sum(len(rows) for _, rows in groups)
        if binary is not None and set(binary) <= NUMPY_COPY_TYPES:  # encoded column-wise with numpy
            sizes = np.array([len(rows) for _, rows in groups])
            data: list[list[Any] | Repeated] = []
            for i, (name, fill, in_row) in enumerate(zip(names, default, from_row, strict=True)):
                if in_row and i in documents:
                    data.append([json_text(row.get(name, fill)) for _, rows in groups for row in rows])
                elif in_row:
                    data.append([row.get(name, fill) for _, rows in groups for row in rows])
                else:
                    data.append(Repeated([json_text(c[name]) if i in documents else c[name] for c, _ in groups],
                                         sizes))
            _copy_in(session, table.name, names, binary,
                     binary_copy_payload(binary, data, count, _client_encoding(session)))
            return count
        fix = [] if binary is None else [(i, _BINARY_COERCE[t]) for i, t in enumerate(binary) if t in _BINARY_COERCE]

        def copied() -> Iterator[list[Any]]:
            for constants, rows in groups:
                fill = filled(constants)
                for row in rows:
                    out = values(row, fill)
                    for i, coerce in fix:
                        if out[i] is not None:
                            out[i] = coerce(out[i])
                    yield out

        _copy_in(session, table.name, names, binary, copied())
    else:
        params = []
        for constants, rows in groups:
            fill = filled(constants)
            params.extend(dict(zip(names, values(row, fill), strict=True)) for row in rows)
        session.execute(table.insert(), params)
        count = len(params)
    return count


def bulk_insert_columns(session: Session, table: Any, columns: dict[str, Sequence[Any] | np.ndarray],
                        constants: dict[str, Any] | None = None) -> int:
    """`bulk_insert` of rows given column-wise: `columns` maps a column name to its values (a
    list or a 1-D numpy array, all the same length), `constants` a column to one value for every
    row; any other column takes its scalar default, else NULL. Non-finite floats are stored as
    NULL. JSON columns are not supported here (use `bulk_insert`). Returns the row count.

    PostgreSQL, when every column's type is in `NUMPY_COPY_TYPES`: the binary COPY stream is
    built from the columns with numpy (`binary_copy_payload`; a constant is encoded once) and sent
    as one block. Otherwise (numeric, timestamps) psycopg encodes the binary COPY row by row from
    one tuple per row, as SQLite's one DBAPI `executemany` reads them."""
    table = getattr(table, "__table__", table)
    constants = constants or {}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"bulk insert into {table.name}: columns of different lengths {sorted(lengths)}")
    count = lengths.pop() if lengths else 0
    if count == 0:
        return 0
    unknown = sorted((set(columns) | set(constants)) - set(table.columns.keys()))
    if unknown:
        raise ValueError(f"bulk insert into {table.name}: unknown column(s) {unknown}")
    chosen = [c for c in table.columns if c.name in columns or c.name in constants
              or not (c.primary_key and c.autoincrement is True)]
    if any(isinstance(c.type, JSON) for c in chosen):
        raise ValueError(f"bulk insert into {table.name}: JSON columns need bulk_insert")
    dialect = session.get_bind().dialect
    postgres = dialect.name == "postgresql"
    binary = _binary_copy_types(chosen, dialect) if postgres else None
    if binary is not None and set(binary) <= NUMPY_COPY_TYPES:  # encoded column-wise with numpy
        data: list[Sequence[Any] | np.ndarray | Repeated] = []
        for column in chosen:
            if column.name in columns:
                raw = columns[column.name]
                data.append(raw if isinstance(raw, np.ndarray)
                            else [None if isinstance(v, float) and not math.isfinite(v) else v for v in raw])
            else:
                value = constants.get(column.name, column.default.arg if column.default is not None
                                      and column.default.is_scalar else None)
                data.append(Repeated([None if isinstance(value, float) and not math.isfinite(value) else value],
                                     np.array([count])))
        _copy_in(session, table.name, [c.name for c in chosen], binary,
                 binary_copy_payload(binary, data, count, _client_encoding(session)))
        return count

    def values(i: int, column: Any) -> list[Any]:
        if postgres:
            coerce = _BINARY_COERCE.get(binary[i]) if binary is not None else None
        else:
            coerce = column.type.bind_processor(dialect)
        if column.name in columns:
            raw = columns[column.name]
            if isinstance(raw, np.ndarray):
                if raw.dtype.kind == "f":
                    out = np.where(np.isfinite(raw), raw, None).tolist()
                else:
                    out = raw.tolist()  # ints, bools and objects as Python values
            else:
                out = [None if isinstance(v, float) and not math.isfinite(v) else v for v in raw]
        else:
            value = constants.get(column.name, column.default.arg if column.default is not None
                                  and column.default.is_scalar else None)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            if coerce is not None and value is not None:
                value = coerce(value)  # once for the whole column
            return [value] * count
        if coerce is None:
            return out
        return [None if v is None else coerce(v) for v in out] if postgres else [coerce(v) for v in out]

    rows = list(zip(*(values(i, c) for i, c in enumerate(chosen)), strict=True))
    if postgres:
        _copy_in(session, table.name, [c.name for c in chosen], binary, rows)
    else:
        quoted = ", ".join(f'"{c.name}"' for c in chosen)
        marks = ", ".join("?" for _ in chosen)
        session.connection().exec_driver_sql(f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks})', rows)
    return count


def _copy_in(session: Session, table_name: str, names: Sequence[str], binary: list[str] | None,
             source: bytes | Iterable[Sequence[Any]]) -> None:
    """PostgreSQL: `COPY table (names) FROM STDIN` on the session's connection, in binary format
    with the psycopg types `binary` (else text). `source` is either the whole binary COPY stream
    (`binary_copy_payload`), sent as it is, or rows (values in `names` order) that psycopg encodes
    one by one."""
    quoted = ", ".join(f'"{n}"' for n in names)
    statement = f'COPY "{table_name}" ({quoted}) FROM STDIN' + ("" if binary is None else " (FORMAT BINARY)")
    cursor = session.connection().connection.driver_connection.cursor()
    with cursor, cursor.copy(statement) as copy:
        if isinstance(source, bytes):
            copy.write(source)  # block mode: psycopg adds neither the signature nor the trailer
            return
        if binary is not None:
            copy.set_types(binary)
        for row in source:
            copy.write_row(row)


def _client_encoding(session: Session) -> str:
    """The Python codec of the session's PostgreSQL connection, as psycopg's text dumpers use it."""
    encoding = session.connection().connection.driver_connection.info.encoding
    return "utf-8" if encoding == "ascii" else encoding


# PostgreSQL column type (as SQLAlchemy compiles it, without modifiers) → the type whose binary
# COPY format psycopg writes for it. `json`'s binary format is its text; `jsonb` (a version byte
# first) and any type not listed here take the text COPY instead.
_BINARY_COPY_TYPES = {
    "UUID": "uuid", "DATE": "date", "DOUBLE PRECISION": "float8", "REAL": "float4", "INTEGER": "int4",
    "BIGINT": "int8", "SMALLINT": "int2", "BOOLEAN": "bool", "JSON": "text", "TEXT": "text",
    "VARCHAR": "text", "NUMERIC": "numeric", "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "TIMESTAMP WITHOUT TIME ZONE": "timestamp", "TIMESTAMP": "timestamp",
}
# what the text COPY accepts that a binary dumper does not: a float into NUMERIC (as its
# shortest repr, the text COPY's digits), any true/false value, a UUID or other value as text
_BINARY_COERCE = {
    "numeric": lambda v: Decimal(repr(float(v))) if isinstance(v, float) else v,
    "bool": bool,
    "uuid": lambda v: v if isinstance(v, uuid.UUID) else uuid.UUID(str(v)),
    "text": lambda v: v if isinstance(v, str) else str(v),
}


def _binary_copy_types(columns: Sequence[Any], dialect: Any) -> list[str] | None:
    """The psycopg type of each column for a binary COPY, or None when a column's type has no
    entry in `_BINARY_COPY_TYPES` (the text COPY is used)."""
    types = []
    for column in columns:
        compiled = column.type.compile(dialect=dialect).upper()
        base, _, modifier = compiled.partition("(")
        base = base.strip()
        if base == "FLOAT":  # FLOAT(p): real up to 24 bits of precision, else double precision
            precision = modifier.rstrip(")").strip()
            base = "REAL" if precision.isdigit() and int(precision) <= 24 else "DOUBLE PRECISION"
        name = _BINARY_COPY_TYPES.get(base)
        if name is None:
            return None
        types.append(name)
    return types


# --- binary COPY encoded column-wise ----------------------------------------------------------

# signature, flags (int32 0: no OIDs), header extension length (int32 0); the trailer is int16 -1
PG_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
PG_COPY_TRAILER = b"\xff\xff"
PG_DATE_EPOCH_ORDINAL = date(2000, 1, 1).toordinal()  # a date is int4 days since 2000-01-01
# the fixed-width psycopg types → the big-endian numpy dtype of their binary value
_FIXED_COPY_DTYPES = {"float8": ">f8", "float4": ">f4", "int2": ">i2", "int4": ">i4", "int8": ">i8",
                      "date": ">i4", "bool": "u1"}
# the types `binary_copy_payload` encodes (json columns are "text": their binary format is the text)
NUMPY_COPY_TYPES = frozenset(_FIXED_COPY_DTYPES) | {"uuid", "text"}


@dataclass(frozen=True, slots=True)
class Repeated:
    """A COPY column given run-length encoded: `values[i]` on the next `counts[i]` rows (e.g.
    one unit's portfolio_id on each of its rows). Each value is encoded once."""

    values: Sequence[Any]
    counts: np.ndarray


def binary_copy_payload(types: Sequence[str], columns: Sequence[Sequence[Any] | np.ndarray | Repeated],
                        count: int, encoding: str = "utf-8") -> bytes:
    """The whole PostgreSQL binary COPY stream of `count` rows given column-wise, in row order.

    `types` are psycopg type names, each in `NUMPY_COPY_TYPES`; `columns` the values of each
    column: a list or 1-D numpy array of `count` values, or a `Repeated`. None is NULL, and so is
    a non-finite float in a float4/float8 column. Values are taken as psycopg's binary dumpers
    take them, with `_BINARY_COERCE`'s conversions: any truthy value is true, a UUID column also
    takes the UUID's text, a text column `str(value)` of a non-string. Raises ValueError on an
    integer out of its type's range, a fractional value in an integer column or a float too large
    for float4.

    Layout: header (`PG_COPY_HEADER`); per row the int16 field count, then per field its int32
    byte length (-1: NULL, no bytes follow) and its big-endian value; the trailer int16 -1: the
    bytes psycopg's `Copy.write_row` sends for the same rows, in the same order. Each field is
    encoded for all rows at once into (lengths, bytes); rows differ in length (text, NULLs), so
    each field's bytes go to their per-row offsets by one numpy fancy assignment (long texts: one
    slice assignment per row). Rows keep their order (a table's serial ids follow it). Per-row
    Python remains only where a value is a Python object without a numpy equivalent: a UUID's
    bytes, `date.toordinal()`, `str.encode()` (a `Repeated` value: once)."""
    fields = [_copy_field(t, c, count, encoding) for t, c in zip(types, columns, strict=True)]
    sizes = np.full(count, 2, dtype=np.int64)
    for lengths, _ in fields:
        sizes += 4 + np.maximum(lengths, 0)
    out = np.empty(len(PG_COPY_HEADER) + int(sizes.sum()) + len(PG_COPY_TRAILER), dtype=np.uint8)
    out[:len(PG_COPY_HEADER)] = np.frombuffer(PG_COPY_HEADER, dtype=np.uint8)
    out[len(out) - len(PG_COPY_TRAILER):] = np.frombuffer(PG_COPY_TRAILER, dtype=np.uint8)
    at = len(PG_COPY_HEADER) + np.cumsum(sizes) - sizes  # where each row starts
    _place(out, at, 2, np.full(count, len(fields), dtype=">i2").view(np.uint8))
    at += 2
    for lengths, data in fields:
        _place(out, at, 4, lengths.astype(">i4").view(np.uint8))
        at += 4
        present = lengths >= 0
        if isinstance(data, list):
            _place_texts(out, at[present], lengths[present], data)
        elif len(data):
            _place(out, at[present], int(lengths[present][0]), data)
        at += np.maximum(lengths, 0)
    return out.tobytes()


def _place(out: np.ndarray, starts: np.ndarray, width: int, data: np.ndarray) -> None:
    """Write `data` (uint8, `width` bytes per segment, back to back) into `out` at `starts`."""
    out[starts[:, None] + np.arange(width)] = data.reshape(len(starts), width)


# a text value this long or longer (on average) is written by one slice assignment per row
# (~0.2 µs), shorter ones by one numpy scatter of all their bytes (~3 ns a byte plus its index)
_ROW_COPY_BYTES = 64


def _place_texts(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray, texts: list[bytes]) -> None:
    """Write `texts` (their `lengths`) into `out` at `starts`."""
    if not texts:
        return
    if int(lengths.sum()) >= _ROW_COPY_BYTES * len(texts):
        buffer = memoryview(out)
        for start, text in zip(starts.tolist(), texts, strict=True):
            buffer[start:start + len(text)] = text
    else:
        out[_segments(starts, lengths)] = np.frombuffer(b"".join(texts), dtype=np.uint8)


def _segments(starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The indices of the segments [starts[i], starts[i] + widths[i]), back to back."""
    ends = np.cumsum(widths)
    return np.repeat(starts - (ends - widths), widths) + np.arange(ends[-1] if len(ends) else 0)


def _copy_field(kind: str, values: Sequence[Any] | np.ndarray | Repeated, count: int,
                encoding: str) -> tuple[np.ndarray, np.ndarray | list[bytes]]:
    """One column's binary COPY values: (each row's byte length, -1 for NULL; the non-NULL
    values' bytes: of a fixed-width type back to back as uint8, of text one bytes per value)."""
    if isinstance(values, Repeated):
        if int(values.counts.sum()) != count:
            raise ValueError(f"binary COPY: a repeated column of {int(values.counts.sum())} rows, expected {count}")
        lengths, data = _copy_field(kind, values.values, len(values.values), encoding)
        present = lengths >= 0
        counts = values.counts[present]
        if not present.any():
            return np.repeat(lengths, values.counts), data
        if isinstance(data, list):
            return np.repeat(lengths, values.counts), np.repeat(np.array(data, dtype=object), counts).tolist()
        return np.repeat(lengths, values.counts), np.repeat(data.reshape(len(counts), -1), counts, axis=0).ravel()
    if len(values) != count:
        raise ValueError(f"binary COPY: a column of {len(values)} values, expected {count}")
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        array = values
        null = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(count, dtype=bool)
    else:  # Python objects (other numpy dtypes as the Python values `tolist` gives)
        array = values if isinstance(values, np.ndarray) and values.dtype == object else np.fromiter(
            values.tolist() if isinstance(values, np.ndarray) else values, dtype=object, count=count)
        null = np.fromiter(map(operator.is_, array, itertools.repeat(None)), dtype=bool, count=count)
    dtype = _FIXED_COPY_DTYPES.get(kind)
    if kind in ("float8", "float4"):
        floats = _filled(array, null, np.nan).astype(np.float64)
        null = ~np.isfinite(floats)
        with np.errstate(over="ignore"):  # a float too large for float4: refused just below
            encoded = floats[~null].astype(dtype)
        if np.isinf(encoded).any():
            raise ValueError("binary COPY: a float out of range for float4")
    elif kind in ("int2", "int4", "int8"):
        filled = _filled(array, null, 0)
        ints = filled.astype(np.int64)
        if filled.dtype.kind != "i" and (filled != ints).any():
            raise ValueError(f"binary COPY: a fractional value in an {kind} column")
        info = np.iinfo(dtype)
        if len(ints) and (ints.min() < info.min or ints.max() > info.max):
            raise ValueError(f"binary COPY: a value out of range for {kind}")
        encoded = ints[~null].astype(dtype)
    elif kind == "bool":
        encoded = _filled(array, null, False)[~null].astype(bool).astype(dtype)
    elif kind == "date":
        days = np.fromiter((v.toordinal() for v in array[~null]), dtype=np.int64, count=int((~null).sum()))
        encoded = (days - PG_DATE_EPOCH_ORDINAL).astype(dtype)
    elif kind == "uuid":
        ids = [v if isinstance(v, uuid.UUID) else uuid.UUID(str(v)) for v in array[~null]]
        encoded = np.frombuffer(b"".join([v.int.to_bytes(16, "big") for v in ids]), dtype=np.uint8)
        return np.where(null, -1, 16), encoded
    elif kind == "text":
        texts = [(v if isinstance(v, str) else str(v)).encode(encoding) for v in array[~null]]
        lengths = np.full(count, -1, dtype=np.int64)
        lengths[~null] = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        return lengths, texts
    else:
        raise ValueError(f"binary COPY: type {kind} is not encoded here (one of {sorted(NUMPY_COPY_TYPES)})")
    width = np.dtype(dtype).itemsize
    return np.where(null, -1, width), np.ascontiguousarray(encoded).view(np.uint8)


def _filled(array: np.ndarray, null: np.ndarray, fill: Any) -> np.ndarray:
    """`array` with `fill` at the `null` rows (a copy when any is null)."""
    if not null.any():
        return array
    array = array.copy()
    array[null] = fill
    return array


def bulk_replace(session: Session, replacements: Sequence[tuple[Any, dict[str, Any], Sequence[dict]]]) -> int:
    """For each (table, key, rows): delete the rows of `table` matching `key` (column → value),
    then insert `rows` with the key columns set. Entries may repeat a table with other keys (the
    units of a chunk): per table, one DELETE for all its keys when they differ in at most one
    column (`c1 = v AND c2 IN (...)`, e.g. a chunk's portfolio ids for one date; else one DELETE
    per key), then one insert of all its rows (`bulk_insert_groups`). On PostgreSQL the deletes
    go in one pipelined round trip. Returns the number of rows inserted."""
    by_table: dict[Any, list[tuple[dict[str, Any], Sequence[dict]]]] = {}
    for t, key, rows in replacements:
        by_table.setdefault(getattr(t, "__table__", t), []).append((key, rows))
    deletes = [where for table, entries in by_table.items()
               for where in _key_filters(table, [key for key, _ in entries])]
    if session.get_bind().dialect.name == "postgresql":
        driver = session.connection().connection.driver_connection
        with driver.pipeline(), driver.cursor() as cursor:
            for table, where in deletes:
                clause = " AND ".join(f'"{c}" = ANY(%s)' if isinstance(v, list) else f'"{c}" = %s'
                                      for c, v in where.items())
                cursor.execute(f'DELETE FROM "{table.name}" WHERE {clause}', list(where.values()))
    else:
        for table, where in deletes:
            session.execute(table.delete().where(*(table.c[c].in_(v) if isinstance(v, list) else table.c[c] == v
                                                   for c, v in where.items())))
    return sum(bulk_insert_groups(session, table, entries) for table, entries in by_table.items())


def _key_filters(table: Any, keys: Sequence[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    """The DELETE filters (table, column → value or list of values) covering exactly `keys`:
    keys with the same columns that differ in at most one column share one filter."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for key in keys:
        by_columns.setdefault(tuple(key), []).append(key)
    filters = []
    for columns, same in by_columns.items():
        varying = [c for c in columns if len({k[c] for k in same}) > 1]
        if len(varying) > 1:  # no single IN list describes them: one filter per key
            filters.extend((table, dict(k)) for k in same)
            continue
        where = dict(same[0])
        if varying:
            where[varying[0]] = list(dict.fromkeys(k[varying[0]] for k in same))
        filters.append((table, where))
    return filters


@dataclass(frozen=True)
class LockRef:
    """The run lock as any process of the run can check it (picklable: shipped to workers).

    `holder_pid`/`hostname`: the run's own process. PostgreSQL: `backend_pid`, the server process
    of the lock's dedicated connection. SQLite: `files`, the (path, st_dev, st_ino) of each file
    whose flock makes the run exclusive; replacing one of them frees the lock. All empty for an
    in-memory database (nothing to check)."""

    holder_pid: int
    hostname: str
    backend_pid: int | None = None
    files: tuple[tuple[str, int, int], ...] = ()

    def confirm(self, session: Session) -> None:
        """Raise LockLost unless the run still holds the lock. Call it in a write transaction
        just before its COMMIT. PostgreSQL: one round trip (~0.5 ms) of two statements — a shared
        `FENCE_LOCK_KEY` lock for the rest of the transaction (a new run waits for it, see
        `run_lock`, so once a run has the lock no commit of a run that lost it can follow), then
        `pg_locks` must show the run lock granted to `backend_pid`. SQLite: the files are
        unchanged; the transaction already holds the database's write lock, so no other run
        writes before this commit. Same host: the run's process must be alive (a worker whose
        parent died)."""
        if self.hostname == socket.gethostname() and not _process_alive(self.holder_pid):
            raise LockLost(f"the run's process {self.holder_pid} is gone")
        for path, dev, ino in self.files:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise LockLost(f"the locked file {path} was deleted") from None
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise LockLost(f"the locked file {path} was replaced")
        if self.backend_pid is None:
            return
        driver = session.connection().connection.driver_connection
        with driver.pipeline(), driver.cursor() as cursor:  # in order, in one round trip
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [FENCE_LOCK_KEY])
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = %s AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
                [self.backend_pid, ADVISORY_LOCK_KEY >> 32, ADVISORY_LOCK_KEY & 0xFFFF_FFFF])
            held = cursor.fetchone()[0]
        if not held:
            raise LockLost(f"the advisory lock's session (backend {self.backend_pid}) ended")


def _process_alive(pid: int) -> bool:
    """True if process `pid` of this host is running (a zombie — killed, not yet reaped — is not)."""
    if pid == os.getpid():
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@contextmanager
def run_lock(engine: Engine) -> Iterator[LockRef]:
    """Hold the one-run-at-a-time lock for the block; raise LockHeld at once if another run has it.
    Yields the LockRef the run checks before each commit (`LockRef.confirm`).

    PostgreSQL: a session-level advisory lock on a dedicated connection; once it is ours, wait (at
    most LOCK_WAIT_SECONDS) for the commits in flight of a run that lost it (`FENCE_LOCK_KEY`).
    SQLite: an exclusive flock on `<database file>.lock` and, on Linux, on the database file itself
    (flock and SQLite's own fcntl locks never interact there), so deleting the `.lock` file does not
    let a second run in. Released in `finally` (and by the OS if the process dies).
    """
    if engine.dialect.name == "postgresql":
        conn = engine.connect()
        try:
            got, backend_pid = conn.execute(text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()"),
                                            {"k": ADVISORY_LOCK_KEY}).one()
            conn.commit()
            if not got:
                raise LockHeld(f"another run holds the advisory lock on {describe(engine)}")
            try:
                _wait_for_fenced_commits(conn, engine)
                yield LockRef(os.getpid(), socket.gethostname(), backend_pid=backend_pid)
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    conn.commit()
                except Exception:  # noqa: BLE001 the connection died (outage, terminated backend)
                    conn.invalidate()  # closed, never pooled: its server session, and the lock, end
        finally:
            conn.close()
        return
    path = lock_file_path(engine)
    if path is None:  # in-memory database: only this process can see it
        yield LockRef(os.getpid(), socket.gethostname())
        return
    # Linux: also the database file itself, which no tidying up deletes
    locked = [path] + ([Path(engine.url.database)] if sys.platform.startswith("linux") else [])
    fds: list[int] = []
    try:
        for file in locked:
            fds.append(os.open(file, os.O_RDWR | os.O_CREAT, 0o644) if file == path
                       else os.open(file, os.O_RDONLY))
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(f"another run holds the lock on {file}") from None
        os.ftruncate(fds[0], 0)
        os.write(fds[0], f"{os.getpid()}\n".encode())
        st = os.fstat(fds[-1])  # the file that makes the run exclusive
        yield LockRef(os.getpid(), socket.gethostname(), files=((str(locked[-1]), st.st_dev, st.st_ino),))
    finally:
        for fd in fds:
            os.close(fd)  # releases its flock


def _wait_for_fenced_commits(conn: Any, engine: Engine) -> None:
    """Take and release FENCE_LOCK_KEY exclusively: returns once no transaction that confirmed an
    earlier run's lock (`LockRef.confirm`) is still open. Raises LockHeld after LOCK_WAIT_SECONDS."""
    try:
        # the lock's session is idle for the whole run: exempt it from idle_session_timeout (PG 14+)
        conn.execute(text("SELECT set_config('idle_session_timeout', '0', false)"
                          " WHERE current_setting('idle_session_timeout', true) IS NOT NULL"))
        conn.execute(text(f"SET lock_timeout = '{LOCK_WAIT_SECONDS}s'"))
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": FENCE_LOCK_KEY})
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FENCE_LOCK_KEY})
        conn.execute(text("RESET lock_timeout"))
        conn.commit()
    except DBAPIError:
        conn.rollback()
        raise LockHeld(f"a previous run on {describe(engine)} is still committing after "
                       f"{LOCK_WAIT_SECONDS} s") from None


def lock_file_path(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database + ".lock")
