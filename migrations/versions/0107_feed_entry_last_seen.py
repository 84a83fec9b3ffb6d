"""retention support: feed_entries.last_seen, and an index on article_bands.article_id

last_seen is when a feed last carried the entry (retention keeps those); existing rows keep
NULL, read as first_seen. The index lets deleting an article cascade to its story band keys
without scanning the whole table for each article; it depends on 0104, which creates the
table.

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
depends_on: str | Sequence[str] | None = '0104'


def upgrade() -> None:
    with op.batch_alter_table('feed_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_seen', monitor.store.models.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_article_bands_article_id', 'article_bands', ['article_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_article_bands_article_id', table_name='article_bands')
    with op.batch_alter_table('feed_entries', schema=None) as batch_op:
        batch_op.drop_column('last_seen')
