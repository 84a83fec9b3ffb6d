"""delivery batches, recipients and channel states

Revision ID: 0105
Revises: 0001
Create Date: 2026-11-22 16:26:46.296495
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.store.models


revision: str = '0105'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('channel_states',
    sa.Column('channel', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('changed_at', monitor.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('next_digest_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('channel')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('released_at', monitor.store.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('batch_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('delivered_to', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_deliveries_batch_id'), ['batch_id'], unique=False)
    # Rows already past pacing stay sendable; pending ones are paced on the next cycle.
    op.execute("UPDATE deliveries SET released_at = created_at WHERE state <> 'pending'")


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_batch_id'))
        batch_op.drop_column('delivered_to')
        batch_op.drop_column('batch_id')
        batch_op.drop_column('released_at')

    op.drop_table('channel_states')
