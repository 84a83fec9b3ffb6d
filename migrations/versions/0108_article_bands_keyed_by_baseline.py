"""article bands keyed by (baseline, band, article_id): one B-tree by band key, not two

The baseline's band keys had an index of their own, (baseline, band), beside the primary
key (band, article_id): each new article put its 32 rows into two B-trees at random pages,
and a store's transaction wrote most of its pages for them. With baseline first in the
primary key, both lookups (the baseline's rows, the recent window's) seek the one B-tree.
The table is copied once, in key order.

Revision ID: 0108
Revises: 0105, 0106, 0107
Create Date: 2026-11-23 09:40:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0108'
down_revision: str | Sequence[str] | None = ('0105', '0106', '0107')
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild(primary_key: list[str]) -> None:
    """article_bands again with this primary key, its rows copied in that order."""
    op.create_table('article_bands_new',
    sa.Column('band', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('article_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('baseline', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint(*primary_key, name='article_bands_new_pkey'),
    sqlite_with_rowid=False,
    )
    columns = 'band, article_id, baseline'
    op.execute(f"INSERT INTO article_bands_new ({columns}) SELECT {columns} "
               f"FROM article_bands ORDER BY {', '.join(primary_key)}")
    op.drop_table('article_bands')  # and its indexes
    op.rename_table('article_bands_new', 'article_bands')
    if op.get_bind().dialect.name == 'postgresql':  # the names a new table would have
        op.execute('ALTER INDEX article_bands_new_pkey RENAME TO article_bands_pkey')
        op.execute('ALTER TABLE article_bands RENAME CONSTRAINT '
                   'article_bands_new_article_id_fkey TO article_bands_article_id_fkey')
    op.create_index('ix_article_bands_article_id', 'article_bands', ['article_id'], unique=False)


def upgrade() -> None:
    _rebuild(['baseline', 'band', 'article_id'])


def downgrade() -> None:
    _rebuild(['band', 'article_id'])
    op.create_index('ix_article_bands_baseline', 'article_bands', ['baseline', 'band'], unique=False)
