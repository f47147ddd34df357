"""profile_absences (profiles a provider does not have) and provider_request_counts (daily quota)

Revision ID: 0002_profile_absences
Revises: 0001_baseline
Create Date: 2026-12-01 11:45:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002_profile_absences'
down_revision: Union[str, None] = '0001_baseline'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('profile_absences',
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('symbol', name=op.f('pk_profile_absences'))
    )
    op.create_table('provider_request_counts',
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('provider', name=op.f('pk_provider_request_counts'))
    )


def downgrade() -> None:
    op.drop_table('provider_request_counts')
    op.drop_table('profile_absences')
