"""story sketch bands: the indexed band keys that find near-duplicate articles

Revision ID: 0104
Revises: 0001
Create Date: 2026-11-22 16:28:39.170777
"""
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = '0104'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Articles older than this cannot be joined by a new one under any sane window; the
# baseline never ages out.
BACKFILL_DAYS = 30


def upgrade() -> None:
    op.create_table('article_bands',
    sa.Column('band', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('article_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('baseline', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('band', 'article_id'),
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('article_bands', schema=None) as batch_op:
        batch_op.create_index('ix_article_bands_baseline', ['baseline', 'band'], unique=False)
    _backfill()


def _backfill() -> None:
    """Sketch the articles stored before this revision, so they can be found as stories."""
    from monitor.store.models import UTCDateTime
    from monitor.stories import sketch

    articles = sa.table('articles', sa.column('id'), sa.column('title'), sa.column('summary'),
                        sa.column('content'), sa.column('baseline'),
                        sa.column('fetched', UTCDateTime()))
    bands = sa.table('article_bands', sa.column('band'), sa.column('article_id'),
                     sa.column('baseline'))
    since = datetime.now(UTC) - timedelta(days=BACKFILL_DAYS)
    conn = op.get_bind()
    rows = conn.execute(sa.select(articles).where(
        sa.or_(articles.c.baseline, articles.c.fetched >= since)))
    batch = []
    for row in rows:
        keys = sketch(row.title or "", row.summary or "", row.content or "").bands
        batch += [{"band": k, "article_id": row.id, "baseline": row.baseline} for k in keys]
    if batch:
        op.bulk_insert(bands, batch)


def downgrade() -> None:
    with op.batch_alter_table('article_bands', schema=None) as batch_op:
        batch_op.drop_index('ix_article_bands_baseline')
    op.drop_table('article_bands')
