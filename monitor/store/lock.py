"""One daemon per SQLite database.

SQLite has no `SKIP LOCKED`, so two daemons on one file would fetch every feed twice. The
daemon holds an exclusive `flock` on a file next to the database for as long as it runs; the
kernel drops it when the process dies, however it dies, so there is no stale lock to clean
up. The file holds who has it, so the refusal can name them. PostgreSQL needs no such lock:
there, several daemons share the work through leases.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from monitor.store.database import DatabaseError


def lock_path(database_url: str) -> Path | None:
    """The lock file for a SQLite database file; None for other backends or :memory:."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).with_name(Path(url.database).name + ".lock")


@contextmanager
def single_daemon(database_url: str, holder: str) -> Iterator[None]:
    """Hold the daemon lock of a SQLite database, or raise DatabaseError naming its holder."""
    path = lock_path(database_url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise DatabaseError(
                f"another monitor daemon ({other}) is already running on {url_file(path)}; "
                "SQLite allows one daemon per database (use PostgreSQL to run several)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def url_file(lock: Path) -> str:
    return str(lock.with_name(lock.name.removesuffix(".lock")))
