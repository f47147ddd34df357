"""Database plumbing: engine, migrations, the upsert helper and the run lock (SPEC §4, §7)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, Engine, Float, Numeric, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

import batch.migrations
from batch.errors import DatabaseUnavailable, LockHeld

# pg_try_advisory_lock key: a fixed 64-bit number private to this job.
ADVISORY_LOCK_KEY = 0x5167_6D61_5369_6768 & 0x7FFF_FFFF_FFFF_FFFF
UPSERT_CHUNK_ROWS = 500
# what a failing database raises: through SQLAlchemy, or from the drivers used directly (COPY)
DATABASE_ERRORS = (SQLAlchemyError, psycopg.Error, sqlite3.Error)


def make_engine(database_url: str) -> Engine:
    """Create the engine. On SQLite: real transactions with SAVEPOINT support, foreign keys on,
    WAL journal and a busy timeout so the platform can read while the job writes."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN (pysqlite savepoint fix)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


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
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


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


def migrate(engine: Engine) -> None:
    """Apply every migration up to head (what `init-db` does)."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def require_current_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseUnavailable(
            f"{describe(engine)} is at migration {current or 'none'}, expected {head}: "
            "run `sigmasight-batch init-db`"
        )


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
    value it refuses (NaN, a date, a UUID key...) takes the recursive conversion."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(jsonable(value), allow_nan=False)


def bulk_insert(session: Session, table: Any, rows: Sequence[dict[str, Any]],
                constants: dict[str, Any] | None = None) -> int:
    """Insert `rows` (column → value; a missing column takes its scalar default, else NULL) with
    the `constants` columns set on every row, inside the session's transaction, by the dialect's
    fastest path: `COPY` on PostgreSQL, one `executemany` elsewhere. Non-finite floats are stored
    as NULL, in numeric columns and inside JSON documents alike. Returns the row count."""
    if not rows:
        return 0
    table = getattr(table, "__table__", table)
    constants = constants or {}
    columns = [c for c in table.columns if not (c.primary_key and c.autoincrement is True
                                                 and c.name not in rows[0] and c.name not in constants)]
    names = [c.name for c in columns]
    fill = [constants[c.name] if c.name in constants else
            c.default.arg if c.default is not None and c.default.is_scalar else None for c in columns]
    from_row = [c.name not in constants for c in columns]
    numeric = [i for i, c in enumerate(columns) if isinstance(c.type, (Float, Numeric))]
    documents = [i for i, c in enumerate(columns) if isinstance(c.type, JSON)]
    postgres = session.get_bind().dialect.name == "postgresql"

    def values(row: dict[str, Any]) -> list[Any]:
        out = [row.get(n, f) if r else f for n, f, r in zip(names, fill, from_row, strict=True)]
        for i in numeric:
            v = out[i]
            if isinstance(v, float) and not math.isfinite(v):
                out[i] = None
        for i in documents:  # JSON None is stored as JSON null, as SQLAlchemy's JSON type does
            out[i] = json_text(out[i]) if postgres else jsonable(out[i])
        return out

    if postgres:
        quoted = ", ".join(f'"{n}"' for n in names)
        cursor = session.connection().connection.driver_connection.cursor()
        with cursor, cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(values(row))
    else:
        session.execute(table.insert(), [dict(zip(names, values(row), strict=True)) for row in rows])
    return len(rows)


def bulk_replace(session: Session, replacements: Sequence[tuple[Any, dict[str, Any], Sequence[dict]]]) -> int:
    """For each (table, key, rows): delete the rows of `table` matching `key` (column → value),
    then insert `rows` with the key columns set (`bulk_insert`). On PostgreSQL the deletes go in
    one pipelined round trip. Returns the number of rows inserted."""
    tables = [(getattr(t, "__table__", t), key, rows) for t, key, rows in replacements]
    if session.get_bind().dialect.name == "postgresql":
        driver = session.connection().connection.driver_connection
        with driver.pipeline(), driver.cursor() as cursor:
            for table, key, _ in tables:
                where = " AND ".join(f'"{column}" = %s' for column in key)
                cursor.execute(f'DELETE FROM "{table.name}" WHERE {where}', list(key.values()))
    else:
        for table, key, _ in tables:
            session.execute(table.delete().where(*(table.c[column] == v for column, v in key.items())))
    return sum(bulk_insert(session, table, rows, key) for table, key, rows in tables)


@contextmanager
def run_lock(engine: Engine) -> Iterator[None]:
    """Hold the one-run-at-a-time lock for the block; raise LockHeld at once if another run has it.

    PostgreSQL: a session-level advisory lock on a dedicated connection. SQLite: an exclusive
    flock on `<database file>.lock`. Released in `finally` (and by the OS if the process dies).
    """
    if engine.dialect.name == "postgresql":
        conn = engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}).scalar()
            conn.commit()
            if not got:
                raise LockHeld(f"another run holds the advisory lock on {describe(engine)}")
            try:
                yield
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
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another run holds the lock file {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_file_path(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database + ".lock")
