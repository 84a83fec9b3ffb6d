"""Engines, sessions and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every monitor process.
_MIGRATION_LOCK_KEY = 0x6D6F6E69746F72  # "monitor"


class DatabaseError(Exception):
    """The database cannot be opened, migrated or used; the message says which and why."""


def _migrations_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "migrations", Path.cwd() / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise DatabaseError("the migrations/ folder was not found next to the monitor package")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # A deferred transaction that reads then writes can still fail with SQLITE_BUSY under
    # WAL; taking the write lock up front makes writers queue on busy_timeout instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"database.url is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    raise DatabaseError(f"unsupported database backend {parsed.get_backend_name()!r}; "
                        "use sqlite:/// or postgresql+psycopg://")


class Database:
    """An engine plus a session factory; sessions are used from worker threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction that commits on success: for a write of a
        statement or two (a feed's release after a 304), where a Session's unit of work is
        overhead paid per feed."""
        with self.engine.begin() as connection:
            yield connection

    def migrate(self) -> None:
        """Bring the schema to the newest revision; idempotent and safe to run concurrently."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_migrations_dir()))
        try:
            with self.engine.connect() as connection:
                if self.dialect == "postgresql":
                    # Two daemons starting together must not both create the tables.
                    connection.execute(text("SELECT pg_advisory_lock(:k)"),
                                       {"k": _MIGRATION_LOCK_KEY})
                    connection.commit()
                try:
                    cfg.attributes["connection"] = connection
                    command.upgrade(cfg, "heads")  # parallel branches of migrations may coexist
                    connection.commit()
                finally:
                    if self.dialect == "postgresql":
                        connection.execute(text("SELECT pg_advisory_unlock(:k)"),
                                           {"k": _MIGRATION_LOCK_KEY})
                        connection.commit()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot migrate {self.safe_url}: {exc}") from None

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()
