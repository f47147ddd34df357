"""natural keys as primary keys; correlation_matrices replaces the pairs table (a view now)

- Every result table (and market_prices) loses its surrogate `id`: its natural key, until now a
  named unique constraint, becomes its primary key `pk_<table>`. Existing foreign keys and the
  `portfolio_id` indexes (the key of the per-unit DELETE on tables keyed by position) are kept.
- `batch_job_results` keeps its surrogate id and unique constraint: it is a run record, not a
  result table, and its `portfolio_id` is NULL for the global engines, which a primary-key column
  cannot be on PostgreSQL.
- `correlation_matrices` holds one row per (portfolio, as-of date, window): `symbols` (sorted),
  `matrix` (row-major ρ, NULL where a pair has < 20 overlaps), `observations` (overlap counts,
  same shape). The rows of `pairwise_correlations` move into it (the window from the unit's
  `correlation_runs` row, else 90; the diagonal, which the pairs table never held, is 1.0 with
  an unknown (NULL) count), and `pairwise_correlations` becomes a view unnesting it on both
  databases: each pair i < j of the sorted symbols with a count, exactly the rows the table held.

Downgrade restores the 0002 schema with its data: pairs rebuilt from the matrices, surrogate ids
regenerated (on PostgreSQL the restored `id` column comes last).

Revision ID: 0003_natural_keys_matrices
Revises: 0002_profile_absences
Create Date: 2026-12-01 15:10:00
"""
from collections.abc import Iterator
from itertools import groupby
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003_natural_keys_matrices'
down_revision: Union[str, None] = '0002_profile_absences'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# table → (its 0002 unique constraint, natural key columns in primary-key order)
NATURAL_KEYS = {
    'market_prices': ('uq_market_prices_symbol_date', ('symbol', 'date')),
    'symbol_factor_betas': ('uq_symbol_factor_betas_key', ('symbol', 'factor', 'as_of_date')),
    'position_factor_exposures': ('uq_position_factor_exposures_key', ('position_id', 'factor', 'as_of_date')),
    'portfolio_factor_exposures': ('uq_portfolio_factor_exposures_key', ('portfolio_id', 'factor', 'as_of_date')),
    'position_greeks': ('uq_position_greeks_key', ('position_id', 'as_of_date')),
    'market_risk_results': ('uq_market_risk_results_key', ('portfolio_id', 'scenario', 'as_of_date')),
    'stress_test_results': ('uq_stress_test_results_key', ('portfolio_id', 'scenario_id', 'as_of_date')),
    'correlation_runs': ('uq_correlation_runs_key', ('portfolio_id', 'as_of_date', 'window_days')),
    'correlation_clusters': ('uq_correlation_clusters_key', ('portfolio_id', 'as_of_date', 'cluster_number')),
    'factor_correlations': ('uq_factor_correlations_key', ('as_of_date', 'factor_1', 'factor_2')),
    'portfolio_snapshots': ('uq_portfolio_snapshots_key', ('portfolio_id', 'snapshot_date')),
}
DEFAULT_WINDOW = 90  # SPEC §6.6: the only window the job has used
BATCH_ROWS = 2_000  # matrices (upgrade) or pairs (downgrade) inserted per statement

RowId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

# Lightweight handles for the data migration (the models follow the head, not this revision).
PAIRS = sa.table('pairwise_correlations', sa.column('portfolio_id', sa.Uuid), sa.column('as_of_date', sa.Date),
                 sa.column('symbol_1', sa.String), sa.column('symbol_2', sa.String),
                 sa.column('correlation', sa.Float), sa.column('observations', sa.Integer))
MATRICES = sa.table('correlation_matrices', sa.column('portfolio_id', sa.Uuid), sa.column('as_of_date', sa.Date),
                    sa.column('window_days', sa.Integer), sa.column('symbols', sa.JSON),
                    sa.column('matrix', sa.JSON), sa.column('observations', sa.JSON))
RUNS = sa.table('correlation_runs', sa.column('portfolio_id', sa.Uuid), sa.column('as_of_date', sa.Date),
                sa.column('window_days', sa.Integer))

# The view: each pair (i, j), i < j, of the sorted `symbols` whose count is not null. Indexes, not
# a string comparison, order the pair, so the view never depends on the database's collation.
POSTGRESQL_VIEW = """
CREATE VIEW pairwise_correlations AS
SELECT m.portfolio_id, m.as_of_date, m.window_days,
       r.symbol AS symbol_1, c.symbol AS symbol_2,
       CAST(c.correlation AS DOUBLE PRECISION) AS correlation,
       CAST(c.observations AS INTEGER) AS observations
FROM correlation_matrices AS m
CROSS JOIN LATERAL ROWS FROM (json_array_elements_text(m.symbols), json_array_elements(m.matrix),
                              json_array_elements(m.observations))
    WITH ORDINALITY AS r(symbol, rho_row, count_row, i)
CROSS JOIN LATERAL ROWS FROM (json_array_elements_text(m.symbols), json_array_elements_text(r.rho_row),
                              json_array_elements_text(r.count_row))
    WITH ORDINALITY AS c(symbol, correlation, observations, j)
WHERE c.j > r.i AND c.observations IS NOT NULL
"""
SQLITE_VIEW = """
CREATE VIEW pairwise_correlations AS
SELECT m.portfolio_id AS portfolio_id, m.as_of_date AS as_of_date, m.window_days AS window_days,
       s1.value AS symbol_1, s2.value AS symbol_2,
       rho.value AS correlation, n.value AS observations
FROM correlation_matrices AS m
JOIN json_each(m.symbols) AS s1
JOIN json_each(m.matrix) AS rho_row ON rho_row.key = s1.key
JOIN json_each(m.observations) AS count_row ON count_row.key = s1.key
JOIN json_each(m.symbols) AS s2 ON s2.key > s1.key
JOIN json_each(rho_row.value) AS rho ON rho.key = s2.key
JOIN json_each(count_row.value) AS n ON n.key = s2.key
WHERE n.type <> 'null'
"""


def _sqlite() -> bool:
    return op.get_bind().dialect.name == 'sqlite'


def upgrade() -> None:
    for table, (unique, key) in NATURAL_KEYS.items():
        if _sqlite():  # SQLite cannot alter a primary key: batch mode rebuilds the table
            with op.batch_alter_table(table, recreate='always') as batch_op:
                batch_op.drop_constraint(unique, type_='unique')
                batch_op.drop_column('id')
                batch_op.create_primary_key(f'pk_{table}', list(key))
        else:
            op.drop_constraint(unique, table, type_='unique')
            op.drop_column(table, 'id')  # drops pk_<table> and the id sequence with it
            op.create_primary_key(f'pk_{table}', table, list(key))

    op.create_table('correlation_matrices',
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('window_days', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('symbols', sa.JSON(), nullable=False),
    sa.Column('matrix', sa.JSON(), nullable=False),
    sa.Column('observations', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_correlation_matrices_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('portfolio_id', 'as_of_date', 'window_days', name=op.f('pk_correlation_matrices'))
    )
    _pairs_to_matrices(op.get_bind())
    op.drop_table('pairwise_correlations')
    op.execute(SQLITE_VIEW if _sqlite() else POSTGRESQL_VIEW)


def downgrade() -> None:
    op.execute('DROP VIEW pairwise_correlations')
    op.create_table('pairwise_correlations',
    sa.Column('id', RowId, autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('symbol_1', sa.String(length=64), nullable=False),
    sa.Column('symbol_2', sa.String(length=64), nullable=False),
    sa.Column('correlation', sa.Float(), nullable=True),
    sa.Column('observations', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_pairwise_correlations_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pairwise_correlations')),
    sa.UniqueConstraint('portfolio_id', 'as_of_date', 'symbol_1', 'symbol_2', name='uq_pairwise_correlations_key')
    )
    _matrices_to_pairs(op.get_bind())
    op.drop_table('correlation_matrices')

    for table, (unique, key) in NATURAL_KEYS.items():
        if _sqlite():
            first = sa.inspect(op.get_bind()).get_columns(table)[0]['name']
            with op.batch_alter_table(table, recreate='always') as batch_op:
                batch_op.drop_constraint(f'pk_{table}', type_='primary')
                batch_op.add_column(sa.Column('id', RowId, primary_key=True, autoincrement=True, nullable=False),
                                    insert_before=first)
                batch_op.create_unique_constraint(unique, list(key))
        else:  # BIGSERIAL numbers the existing rows
            op.drop_constraint(f'pk_{table}', table, type_='primary')
            op.execute(f'ALTER TABLE "{table}" ADD COLUMN id BIGSERIAL NOT NULL')
            op.create_primary_key(f'pk_{table}', table, ['id'])
            op.create_unique_constraint(unique, table, list(key))


# --- data ---------------------------------------------------------------------------------------


def _batches(rows: Iterator[dict], size: int = BATCH_ROWS) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pairs_to_matrices(conn: sa.Connection) -> None:
    """One matrix per (portfolio, as-of date) of the pairs table: the symbols of its pairs sorted,
    each pair's ρ and count at (i, j) and (j, i), 1.0 and an unknown count on the diagonal, NULL
    for a pair the table did not hold (the view omits it, as the table did)."""
    windows: dict[tuple, list[int]] = {}
    for pid, day, window in conn.execute(sa.select(RUNS.c.portfolio_id, RUNS.c.as_of_date, RUNS.c.window_days)):
        windows.setdefault((pid, day), []).append(window)
    pairs = conn.execute(sa.select(PAIRS).order_by(PAIRS.c.portfolio_id, PAIRS.c.as_of_date)
                         .execution_options(yield_per=BATCH_ROWS))  # streamed

    def matrices() -> Iterator[dict]:
        for (pid, day), group in groupby(pairs, key=lambda r: (r.portfolio_id, r.as_of_date)):
            group = list(group)
            symbols = sorted({r.symbol_1 for r in group} | {r.symbol_2 for r in group})
            at = {s: i for i, s in enumerate(symbols)}
            n = len(symbols)
            rho = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
            counts: list[list[int | None]] = [[None] * n for _ in range(n)]
            for r in group:
                i, j = at[r.symbol_1], at[r.symbol_2]
                rho[i][j] = rho[j][i] = r.correlation
                counts[i][j] = counts[j][i] = r.observations
            known = windows.get((pid, day), [])
            window = DEFAULT_WINDOW if not known or DEFAULT_WINDOW in known else min(known)
            yield {'portfolio_id': pid, 'as_of_date': day, 'window_days': window, 'symbols': symbols,
                   'matrix': rho, 'observations': counts}

    for batch in _batches(matrices()):
        conn.execute(MATRICES.insert(), batch)


def _matrices_to_pairs(conn: sa.Connection) -> None:
    """The pairs table rebuilt from the matrices: each pair i < j with a count, as the view reads."""
    stored = conn.execute(sa.select(MATRICES).order_by(MATRICES.c.portfolio_id, MATRICES.c.as_of_date,
                                                       MATRICES.c.window_days).execution_options(yield_per=200))

    def pairs() -> Iterator[dict]:
        for m in stored:
            symbols = m.symbols
            for i, a in enumerate(symbols):
                for j in range(i + 1, len(symbols)):
                    if m.observations[i][j] is not None:
                        yield {'portfolio_id': m.portfolio_id, 'as_of_date': m.as_of_date, 'symbol_1': a,
                               'symbol_2': symbols[j], 'correlation': m.matrix[i][j],
                               'observations': m.observations[i][j]}

    for batch in _batches(pairs()):
        conn.execute(PAIRS.insert(), batch)
