"""result tables keyed for the chunk DELETE: (portfolio_id, as_of_date) leads an index of each

The job replaces a chunk's results with one DELETE per result table, `WHERE portfolio_id = ANY(the
chunk's portfolios) AND as_of_date = d` (`snapshot_date` for snapshots; `batch.db.bulk_replace`).
At 0005 six result tables had no index leading with both columns, so that DELETE walked every
stored date of the chunk's portfolios and filtered the date out — a nightly run slowed down as
history accumulated (a year of it: 252 times the index entries of one date), a backfill as it went:
- `position_valuations`, `position_greeks`, `position_factor_exposures`: primary key
  (position_id[, factor], as_of_date), index `ix_<table>_portfolio_id` on (portfolio_id). That
  index becomes `ix_<table>_portfolio_id_as_of_date` on (portfolio_id, as_of_date); it still
  serves everything the old one did (its first column is the same), e.g. the portfolio delete
  trigger.
- `portfolio_factor_exposures`, `market_risk_results`, `stress_test_results`: primary key
  (portfolio_id, <name>, as_of_date). The same columns in the order (portfolio_id, as_of_date,
  <name>): the same uniqueness, no extra index.
Unchanged, already led by (portfolio_id, date): portfolio_snapshots, correlation_runs,
correlation_matrices, correlation_clusters. No row changes. Downgrade restores the 0005 index and
key order.

PostgreSQL builds each index inside the migration's transaction, the table locked meanwhile (one
sort of its rows: 1.1–1.2 s either way with 3.0 million `position_factor_exposures` rows, measured).
SQLite creates and drops indexes in place but cannot alter a primary key: batch mode rebuilds the
three portfolio-level tables. A rebuild drops the table and renames its copy into place, which
SQLite refuses while a trigger or view refers to a table that is, at that moment, absent; so every
trigger and view (0005's delete triggers, which name these tables, and 0003's
`pairwise_correlations` view) is dropped first and recreated afterwards from its stored definition,
unchanged.

Revision ID: 0006_portfolio_date_keys
Revises: 0005_result_tables_without_fks
Create Date: 2026-12-01 18:50:00
"""
from typing import Sequence, Union

from alembic import op
from sqlalchemy import text

revision: str = '0006_portfolio_date_keys'  # alembic_version holds at most 32 characters
down_revision: Union[str, None] = '0005_result_tables_without_fks'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

POSITION_TABLES = ('position_valuations', 'position_greeks', 'position_factor_exposures')
# table → (primary key at 0005, primary key at 0006)
PRIMARY_KEYS = {
    'portfolio_factor_exposures': (('portfolio_id', 'factor', 'as_of_date'),
                                   ('portfolio_id', 'as_of_date', 'factor')),
    'market_risk_results': (('portfolio_id', 'scenario', 'as_of_date'),
                            ('portfolio_id', 'as_of_date', 'scenario')),
    'stress_test_results': (('portfolio_id', 'scenario_id', 'as_of_date'),
                            ('portfolio_id', 'as_of_date', 'scenario_id')),
}
OLD_INDEX = ('portfolio_id',)
NEW_INDEX = ('portfolio_id', 'as_of_date')


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"  # ix_<table>_portfolio_id: the naming convention's


def upgrade() -> None:
    _change(index=(OLD_INDEX, NEW_INDEX), key=1)


def downgrade() -> None:
    _change(index=(NEW_INDEX, OLD_INDEX), key=0)


def _change(index: tuple[tuple[str, ...], tuple[str, ...]], key: int) -> None:
    """Replace each position-level table's index `index[0]` by `index[1]`, and give each
    portfolio-level table the primary key PRIMARY_KEYS[table][key]."""
    old, new = index
    for table in POSITION_TABLES:  # new index first: the DELETE always has one to use
        op.create_index(_index_name(table, new), table, list(new))
        op.drop_index(_index_name(table, old), table_name=table)
    if op.get_bind().dialect.name != 'sqlite':
        for table, keys in PRIMARY_KEYS.items():
            op.execute(f'ALTER TABLE {table} DROP CONSTRAINT pk_{table}, '
                       f'ADD CONSTRAINT pk_{table} PRIMARY KEY ({", ".join(keys[key])})')
        return
    conn = op.get_bind()
    kept = conn.execute(text(  # views, then triggers, each in creation order
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') AND sql IS NOT NULL "
        "ORDER BY type DESC, rowid")).all()
    for kind, name, _ in kept:
        op.execute(f'DROP {kind.upper()} {name}')
    for table, keys in PRIMARY_KEYS.items():
        with op.batch_alter_table(table, recreate='always') as batch_op:
            batch_op.drop_constraint(f'pk_{table}', type_='primary')
            batch_op.create_primary_key(f'pk_{table}', list(keys[key]))
    for _, _, sql in kept:
        op.execute(sql)
