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

from sqlalchemy import inspect, text

from monitor.store.database import Database, _migrations_dir, _revision_parents
from tests.conftest import ROOT, write_config

# `monitor run` in a process of its own, saying at exit what was ever imported. (pytest
# brings pygments, which httpx's CLI imports first.)
RUN = ("import atexit, sys; "
       "atexit.register(lambda: print('alembic imported:', 'alembic' in sys.modules, "
       "'httpx CLI imported:', 'pygments' in sys.modules)); "
       "from monitor.cli import main; raise SystemExit(main(sys.argv[1:]))")


def _upgrade_to(db: Database, revision: str) -> None:
    """Alembic itself, as an older monitor left the database."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    with db.engine.connect() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
        connection.commit()


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


def test_revision_graph_read_as_text_matches_alembic() -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory
    from alembic.util import to_tuple

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    scripts = ScriptDirectory.from_config(cfg)
    expected = {s.revision: {*to_tuple(s.down_revision, ()), *to_tuple(s.dependencies, ())}
                for s in scripts.walk_revisions()}
    assert _revision_parents(_migrations_dir() / "versions") == expected


def test_a_stale_schema_is_still_migrated(db_url: str) -> None:
    db = Database(db_url)
    assert not db.schema_is_current()  # an empty database
    _upgrade_to(db, "0001")
    assert not db.schema_is_current()
    _upgrade_to(db, "0105")
    assert not db.schema_is_current()  # one branch of several
    db.migrate()
    assert db.schema_is_current()
    with db.engine.connect() as connection:
        assert "host" in {c["name"] for c in inspect(connection).get_columns("feeds")}
        versions = {v for (v,) in connection.execute(text("SELECT version_num FROM "
                                                          "alembic_version"))}
    assert versions == {"0105", "0106", "0107"}
    db.dispose()


def test_an_unknown_revision_is_left_to_alembic(sqlite_url: str) -> None:
    """A database a newer monitor migrated is not taken for current."""
    db = Database(sqlite_url)
    db.migrate()
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO alembic_version VALUES ('9999')"))
    assert not db.schema_is_current()
    db.dispose()


def test_run_on_a_current_schema_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    config = write_config(tmp_path / "monitor.yaml", url)
    # The first start creates the schema, so it needs Alembic; the next one does not.
    assert "alembic imported: True" in _run_daemon_once(config, tmp_path / "first.log")
    second = _run_daemon_once(config, tmp_path / "second.log")
    assert "alembic imported: False" in second and "httpx CLI imported: False" in second

    stale_url = f"sqlite:///{tmp_path / 'stale.db'}"
    stale = Database(stale_url)
    _upgrade_to(stale, "0001")  # as an older monitor left it
    config = write_config(tmp_path / "stale.yaml", stale_url)
    assert "alembic imported: True" in _run_daemon_once(config, tmp_path / "third.log")
    assert stale.schema_is_current()
    stale.dispose()
