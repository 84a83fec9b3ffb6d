"""The settings every SQLite connection of the pool gets when it is opened."""

from __future__ import annotations

from typing import Any

from monitor.store.database import SQLITE_CACHE_KIB, Database


def _pragma(connection: Any, name: str) -> object:
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA {name}")
    value = cursor.fetchone()[0]
    cursor.close()
    return value


def test_every_connection_has_the_small_page_cache_and_wal(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        # Two at once, so the second is a new connection rather than the first one reused
        # (raw DBAPI connections: the engine's connections take SQLite's write lock).
        connections = [db.engine.raw_connection(), db.engine.raw_connection()]
        for connection in connections:
            # Negative: KiB rather than pages. SQLite's default is -2000.
            assert _pragma(connection, "cache_size") == -SQLITE_CACHE_KIB == -512
            assert _pragma(connection, "journal_mode") == "wal"
            assert _pragma(connection, "foreign_keys") == 1
        for connection in connections:
            connection.close()
    finally:
        db.dispose()
