"""Engine and session factory from one URL, plus the schema guard.

The URL comes from `Settings().database_url` (`CLASP_DATABASE_URL`), default
`sqlite:///clasp.db` in the working directory. `postgresql://` URLs are sent to
psycopg 3 (`postgresql+psycopg://`), the driver the project installs.

SQLite is tuned for several processes on one file: WAL journal (readers do not
block the writer), `busy_timeout` (a writer waits for the lock instead of failing
at once), foreign keys on, and every transaction opened with `BEGIN IMMEDIATE`
so that a transaction that reads then writes cannot fail half-way with
"database is locked" when another process wrote in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str | URL) -> URL:
    u = make_url(url) if isinstance(url, str) else url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def is_sqlite(url: str | URL) -> bool:
    return normalize_url(url).get_backend_name() == "sqlite"


def display_url(url: str | URL) -> str:
    """The URL with any password masked, for messages."""
    return normalize_url(url).render_as_string(hide_password=True)


def _sqlite_memory(u: URL) -> bool:
    return u.database in (None, "", ":memory:") or (u.query.get("mode") == "memory")


def make_engine(url: str | URL, **kwargs) -> Engine:
    """An Engine for `url` with the settings CLASP relies on (see module docstring)."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        memory = _sqlite_memory(u)
        if not memory and u.database:
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        if memory:
            connect_args.setdefault("check_same_thread", False)
            kwargs.setdefault("poolclass", StaticPool)
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        _tune_sqlite(engine, wal=not memory)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, **kwargs)


def _tune_sqlite(engine: Engine, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy (not the sqlite3 module) open transactions: see "begin".
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if wal:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(url_or_engine: str | URL | Engine) -> sessionmaker[Session]:
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(url_or_engine: str | URL | Engine) -> Iterator[Session]:
    """A session that is closed at the end (the operations in registry.py, queue.py ... commit themselves)."""
    factory = make_session_factory(url_or_engine)
    session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
        if not isinstance(url_or_engine, Engine):
            factory.kw["bind"].dispose()
