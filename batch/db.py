"""Database plumbing: engine, migrations, the upsert helper and the run lock (SPEC §4, §7)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import batch.migrations
from batch.errors import DatabaseUnavailable, LockHeld

# pg_try_advisory_lock key: a fixed 64-bit number private to this job.
ADVISORY_LOCK_KEY = 0x5167_6D61_5369_6768 & 0x7FFF_FFFF_FFFF_FFFF
UPSERT_CHUNK_ROWS = 500


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
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.commit()
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
