"""feed entry last seen: when a feed last carried the entry (retention keeps those)

Existing rows keep NULL, read as first_seen.

Revision ID: 0107
Revises: 0001
Create Date: 2026-11-22 16:28:08.725479
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.store.models


revision: str = '0107'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('feed_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_seen', monitor.store.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('feed_entries', schema=None) as batch_op:
        batch_op.drop_column('last_seen')
