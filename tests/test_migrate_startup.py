"""What `monitor run` leaves out of its memory: Alembic when the schema is current (the
version table is asked first, see `Database.schema_is_current`), httpx's command-line
client always."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from monitor.store.database import SCHEMA_HEADS, Database, DatabaseError
from tests.conftest import ROOT, alembic, write_config

# `monitor run` in a process of its own, saying at exit what was ever imported. (pytest
# brings pygments, which httpx's CLI imports first.)
RUN = ("import atexit, sys; "
       "atexit.register(lambda: print('alembic imported:', 'alembic' in sys.modules, "
       "'httpx CLI imported:', 'pygments' in sys.modules)); "
       "from monitor.cli import main; raise SystemExit(main(sys.argv[1:]))")


def _run_daemon_once(config: Path, log_path: Path) -> str:
    """Start `monitor run`, stop it with SIGTERM once it runs; what it printed."""
    with log_path.open("w") as log:
        daemon = subprocess.Popen([sys.executable, "-c", RUN, "--config", str(config), "run"],
                                  cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                                  stderr=log, text=True)
    try:
        deadline = time.monotonic() + 60
        while "monitor running" not in log_path.read_text():
            assert daemon.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, log_path.read_text()
    return out


def test_schema_heads_are_what_alembic_leaves(sqlite_url: str) -> None:
    """A new migration must be named in SCHEMA_HEADS, or a daemon would take a database
    that lacks it for current."""
    db = Database(sqlite_url)
    db._upgrade()  # Alembic itself, whatever SCHEMA_HEADS says
    with db.engine.connect() as connection:
        versions = {v for (v,) in connection.execute(text("SELECT version_num FROM "
                                                          "alembic_version"))}
    db.dispose()
    assert versions == SCHEMA_HEADS, (
        "write the revisions Alembic leaves in alembic_version into "
        "monitor.store.database.SCHEMA_HEADS")


def test_a_stale_schema_is_still_migrated(db_url: str) -> None:
    db = Database(db_url)
    assert not db.schema_is_current()  # an empty database
    alembic(db, "upgrade", "0001")
    assert not db.schema_is_current()
    alembic(db, "upgrade", "0105")
    assert not db.schema_is_current()  # one branch of several
    db.migrate()
    assert db.schema_is_current()
    with db.engine.connect() as connection:
        assert "host" in {c["name"] for c in inspect(connection).get_columns("feeds")}
        versions = {v for (v,) in connection.execute(text("SELECT version_num FROM "
                                                          "alembic_version"))}
    assert versions == SCHEMA_HEADS
    db.dispose()


def test_an_unknown_revision_is_left_to_alembic(sqlite_url: str) -> None:
    """A database a newer monitor migrated is not taken for current."""
    db = Database(sqlite_url)
    db.migrate()
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO alembic_version VALUES ('9999')"))
    assert not db.schema_is_current()
    db.dispose()


def test_run_keeps_alembic_out_of_the_daemon(tmp_path: Path) -> None:
    """A new database and a stale one are migrated by a child process; a current one is
    only read. The daemon itself never imports Alembic (nor httpx's CLI)."""
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    config = write_config(tmp_path / "monitor.yaml", url)
    for start in ("new", "current"):
        out = _run_daemon_once(config, tmp_path / f"{start}.log")
        assert "alembic imported: False" in out and "httpx CLI imported: False" in out
    assert "Running upgrade" in (tmp_path / "new.log").read_text()  # the child's log
    assert "Running upgrade" not in (tmp_path / "current.log").read_text()

    stale_url = f"sqlite:///{tmp_path / 'stale.db'}"
    stale = Database(stale_url)
    alembic(stale, "upgrade", "0001")  # as an older monitor left it
    config = write_config(tmp_path / "stale.yaml", stale_url)
    assert "alembic imported: False" in _run_daemon_once(config, tmp_path / "stale.log")
    assert "Running upgrade 0001 -> 0104" in (tmp_path / "stale.log").read_text()
    assert stale.schema_is_current()
    stale.dispose()


def test_a_failed_migration_in_the_child_says_why(tmp_path: Path) -> None:
    (tmp_path / "monitor.db").mkdir()  # SQLite cannot open a folder
    db = Database(f"sqlite:///{tmp_path / 'monitor.db'}")
    with pytest.raises(DatabaseError, match=r"^cannot migrate sqlite:///.*unable to open"):
        db.migrate(in_child=True)
    db.dispose()
