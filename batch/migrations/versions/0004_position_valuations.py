"""position_valuations: the valuation engine's per-position values (SPEC §6.1)

Job records became summaries (SPEC §8), so the per-position list of the valuation record (price,
price date, price source, market value and flags of every position) needs a result table: one
row per position valued for a portfolio-date, natural key (position_id, as_of_date) as primary
key, `portfolio_id` indexed (the key of the per-unit DELETE) with the same foreign keys as
`position_greeks`. `market_value` is NULL, never 0, when the position could not be priced.

The upgrade creates the table empty: dates already run get their rows when they are run again.
The downgrade drops it (0003 has no place for its rows).

Revision ID: 0004_position_valuations
Revises: 0003_natural_keys_matrices
Create Date: 2026-12-01 16:00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004_position_valuations'
down_revision: Union[str, None] = '0003_natural_keys_matrices'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('position_valuations',
    sa.Column('position_id', sa.Uuid(), nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=False),
    sa.Column('price', sa.Float(), nullable=True),
    sa.Column('price_date', sa.Date(), nullable=True),
    sa.Column('price_source', sa.String(length=16), nullable=True),
    sa.Column('market_value', sa.Float(), nullable=True),
    sa.Column('flags', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_position_valuations_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['position_id'], ['positions.id'], name=op.f('fk_position_valuations_position_id_positions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('position_id', 'as_of_date', name=op.f('pk_position_valuations'))
    )
    with op.batch_alter_table('position_valuations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_position_valuations_portfolio_id'), ['portfolio_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('position_valuations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_position_valuations_portfolio_id'))
    op.drop_table('position_valuations')
