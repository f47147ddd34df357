"""symbol_factor_betas indexed by as_of_date

The symbol-betas engine replaces a date's rows with `DELETE ... WHERE as_of_date = :d` (and
reads them back by date); the primary key (symbol, factor, as_of_date) puts the date last, so that
DELETE walked every stored date of every symbol: a 252-session backfill of 100 portfolios spent
0.25 s per date in the engine, growing with the dates stored. An index on (as_of_date) bounds it
by the date. The downgrade drops the index (no data changes either way).

Revision ID: 0007_symbol_betas_date_index
Revises: 0006_portfolio_date_keys
Create Date: 2026-12-01 19:35:00
"""
from typing import Sequence, Union

from alembic import op

revision: str = '0007_symbol_betas_date_index'
down_revision: Union[str, None] = '0006_portfolio_date_keys'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEX = 'ix_symbol_factor_betas_as_of_date'


def upgrade() -> None:
    op.create_index(INDEX, 'symbol_factor_betas', ['as_of_date'])


def downgrade() -> None:
    op.drop_index(INDEX, table_name='symbol_factor_betas')
