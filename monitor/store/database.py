"""Engines, sessions and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
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


# The head revisions of migrations/versions: a database whose version table holds exactly
# these needs no migration, and the daemon learns that without importing Alembic.
# tests/test_migrate_startup.py fails until a new migration's revision is written here.
SCHEMA_HEADS = frozenset({"0108"})


# SQLite's page cache per connection, in KiB (a negative cache_size is KiB, not pages).
# SQLite's default, 2,000 KiB, fills up in a daemon and stays for the connection's life:
# with the schema and prepared statements, 2.9 MB per pooled connection. The pages it
# would keep are in the operating system's file cache anyway, a read() away; 512 KiB
# keeps the B-tree's inner pages, which every statement walks, and measured no CPU cost.
SQLITE_CACHE_KIB = 512


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
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


class Priority(IntEnum):
    """Which transaction writes first when several threads of a process wait for SQLite."""

    ROUTINE = 0  # bookkeeping: a feed's release after a 304, a deferral, an error
    NORMAL = 1  # new articles and their alerts, claims, everything else
    DELIVERY = 2  # claiming and recording alerts that are already queued


class WriterQueue:
    """This process's queue for SQLite's single write lock (every transaction takes it with
    BEGIN IMMEDIATE).

    Without it, threads wait inside SQLite's busy handler, which polls with sleeps growing
    to 100 ms: the lock sits free while the waiters sleep, and whoever wakes first wins.
    Here the lock is handed straight to the next waiter: the highest priority first, then
    the longest waiting. So an alert is not stuck behind the dozens of routine writes a
    second of a daemon (one per 304), and an alert already queued goes out before the
    next article is stored. Other processes still meet busy_timeout. Re-entrant for the
    holding thread, so a nested transaction behaves as it did without the queue.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._holder: int | None = None  # thread ident
        self._depth = 0
        self._order = itertools.count()
        # (-priority, arrival, gate, thread): the heap's first entry goes next.
        self._waiting: list[tuple[int, int, threading.Lock, int]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def turn(self, priority: Priority) -> Iterator[None]:
        me = threading.get_ident()
        gate: threading.Lock | None = None
        with self._guard:
            if self._holder is None:
                self._holder = me
            elif self._holder != me:
                gate = threading.Lock()
                gate.acquire()
                heapq.heappush(self._waiting, (-priority, next(self._order), gate, me))
        if gate is not None:
            gate.acquire()  # released by the holder that hands the lock over
        self._depth += 1  # only the holder touches it
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                with self._guard:
                    if self._waiting:
                        _, _, gate, self._holder = heapq.heappop(self._waiting)
                        gate.release()
                    else:
                        self._holder = None


class Database:
    """An engine plus a session factory; sessions are used from worker threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # PostgreSQL has row locks and needs no queue.
        self._writers = WriterQueue() if self.dialect == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _turn(self, priority: Priority) -> contextlib.AbstractContextManager[None]:
        return self._writers.turn(priority) if self._writers else contextlib.nullcontext()

    @contextmanager
    def session(self, priority: Priority = Priority.NORMAL) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error;
        `priority` orders it among this process's threads waiting for SQLite's writer."""
        with self._turn(priority), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self, priority: Priority = Priority.ROUTINE) -> Iterator[Connection]:
        """A Core connection in a transaction that commits on success: for the writes made
        at every refresh (a feed's release after a 304, a changed feed's store), which run
        Core statements only, so a Session's unit of work would be overhead paid per feed.
        By default a routine write: on SQLite it lets waiting sessions write first."""
        with self._turn(priority), self.engine.begin() as connection:
            yield connection

    def migrate(self, in_child: bool = False) -> None:
        """Bring the schema to the newest revision; idempotent and safe to run concurrently.

        `in_child` runs Alembic in a short-lived process of its own, for the daemon:
        importing and running it (a new database or a stale one) would otherwise stay in
        the daemon's memory for good, 9 MB of RSS with 5,000 feeds.
        """
        if self.schema_is_current():
            return
        if in_child:
            self._upgrade_in_child()
        else:
            self._upgrade()

    def _upgrade_in_child(self) -> None:
        # The URL goes in the environment, not on a command line everyone can read.
        env = {**os.environ, _MIGRATE_URL_ENV: self.url,
               "PYTHONPATH": os.pathsep.join(
                   [str(Path(__file__).resolve().parents[2]),
                    *filter(None, [os.environ.get("PYTHONPATH")])])}
        child = subprocess.run(
            [sys.executable, "-c", "from monitor.store.database import _migrate_from_env; "
             "_migrate_from_env()"], env=env, capture_output=True, text=True, check=False)
        lines = child.stderr.strip().splitlines()
        if child.returncode != 0:
            # The reason on stdout; anything else (a traceback) ends in its last line.
            reason = child.stdout.strip() or (lines[-1] if lines else "")
            raise DatabaseError(reason or f"cannot migrate {self.safe_url}: the migration "
                                          f"process exited with {child.returncode}")
        for line in lines:
            log.info("%s", line)  # Alembic's "Running upgrade ...", as when run in-process

    def schema_is_current(self) -> bool:
        """Whether every migration has already run, asked of the version table directly.

        Nearly every start finds the schema current, and Alembic, its migration scripts
        and their run cost a daemon 8.5 MB of RSS for the rest of its life just to learn
        that. False whenever in doubt (no version table, other revisions): then Alembic
        looks for itself, and says so if a newer monitor migrated this database.
        """
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(text("SELECT version_num FROM alembic_version"))
                applied = {version for (version,) in rows}
        except SQLAlchemyError:
            return False  # not created yet, or unreachable: Alembic reports it properly
        return applied == SCHEMA_HEADS

    def _upgrade(self) -> None:
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


_MIGRATE_URL_ENV = "MONITOR_MIGRATE_URL"


def _migrate_from_env() -> None:
    """The child process of `Database.migrate(in_child=True)`: its log on stderr, and on
    failure the reason on stdout, exit status 1."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)  # "Running upgrade"
    db = Database(os.environ[_MIGRATE_URL_ENV])
    try:
        db._upgrade()
    except DatabaseError as exc:
        print(exc)
        raise SystemExit(1) from None
    finally:
        db.dispose()
