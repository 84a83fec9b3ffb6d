"""Alembic environment. `monitor migrate` runs it in-process on the application's connection;
`alembic upgrade head` (with alembic.ini and MONITOR_DATABASE_URL) also works."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from monitor.store.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    # No fileConfig() here: it would replace the daemon's logging setup.
    _run(connection)
else:
    url = os.environ.get("MONITOR_DATABASE_URL") or context.config.get_main_option(
        "sqlalchemy.url")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
