"""Shared fixtures: database URLs (SQLite file, and PostgreSQL when configured), loopback
servers, and a helper that writes a config file for a test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.servers import FeedServer, SmtpServer, WebhookReceiver

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TESTDATA = SHARED / "testdata"
POSTGRES_URL = os.environ.get("MONITOR_TEST_POSTGRES_URL")

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def shared_testdata(folder: str) -> Path:
    """A folder of ../shared/testdata, or skip naming it when it is absent."""
    path = TESTDATA / folder
    if not path.exists():
        pytest.skip(f"{path} is absent (shared test data is not on this machine)")
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own settings must not leak into tests.
    for name in ("MONITOR_DATABASE_URL", "MONITOR_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def _postgres_schema_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("MONITOR_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend: a SQLite file, a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'monitor.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitor.db'}"


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer().start()
    yield server
    server.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def alembic(db: Any, verb: str, revision: str) -> None:
    """Alembic itself on `db` (a `Database`), as an older or newer monitor would leave it:
    `verb` is "upgrade" or "downgrade"."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from monitor.store.database import _migrations_dir

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    with db.engine.connect() as connection:
        cfg.attributes["connection"] = connection
        getattr(command, verb)(cfg, revision)
        connection.commit()


def write_config(path: Path, db_url: str, **sections: Any) -> Path:
    """Write a config for a test; seed path points at the project's seed_data."""
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "seed": {"path": str(ROOT / "seed_data")},
        "scheduler": {"tick": 0.2, "delivery_interval": 0.5, "shutdown_grace": 5},
        "fetch": {"connect_timeout": 2, "read_timeout": 2, "total_timeout": 5},
        # Every test server is on loopback, which the private-network guard refuses by
        # default; the guard's own tests turn it back on.
        "network": {"allow_private_networks": True},
        # Off unless a test asks for it (port 0 or a free port): parallel runs must not
        # meet on the default 127.0.0.1:8787.
        "http": {"listen": None},
    }
    data.update(sections)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path
