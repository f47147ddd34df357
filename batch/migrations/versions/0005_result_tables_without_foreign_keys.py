"""result tables without foreign keys; deletes cascade to them by trigger

The result tables written for every unit lose their FOREIGN KEY constraints (to `portfolios.id`,
`positions.id`, `stress_scenarios.scenario_id`): the database checked every inserted row against
its parent, ~3 s of the ~9 s a forced rerun of 1,000 portfolios × 50 positions spends writing
results on PostgreSQL (measured; README "Stored results"). The job writes only rows of the
portfolios, positions and scenarios it has just read, so those checks never failed; the
`portfolio_id` indexes stay. The one case no check covers any more: a portfolio or position
deleted while a run computes its unit (after the read, before the chunk's commit) leaves that
unit's rows behind.

What the constraints did on delete is kept, by triggers that cost nothing when rows are inserted:
- deleting a portfolio deletes its rows in every result table (was ON DELETE CASCADE), deleting a
  position its rows in the tables keyed by position (likewise): AFTER DELETE triggers on
  `portfolios` and `positions` — on PostgreSQL one per statement over the deleted rows (a plpgsql
  function), on SQLite one per row;
- deleting a stress scenario that has results is refused, as the constraint's NO ACTION did (a
  BEFORE DELETE trigger raising a foreign-key violation on PostgreSQL, an ABORT on SQLite):
  deactivate the scenario instead (`is_active`).
Not kept: an UPDATE of a referenced id (`portfolios.id`, `positions.id`, `scenario_id`) was refused
and no longer is; the ids are UUIDs and scenario ids that nothing updates.

Downgrade drops the triggers and restores the constraints. Rows that reference no parent
(possible without the constraints, e.g. written by hand) would make restoring them fail: they are
DELETED first.

On SQLite, which cannot drop or add a constraint, batch mode rebuilds each table; the
`pairwise_correlations` view over `correlation_matrices` is dropped and recreated around it (its
stored definition, unchanged).

Revision ID: 0005_result_tables_without_fks
Revises: 0004_position_valuations
Create Date: 2026-12-01 18:20:00
"""
from typing import Sequence, Union

from alembic import op
from sqlalchemy import text

revision: str = '0005_result_tables_without_fks'  # alembic_version holds at most 32 characters
down_revision: Union[str, None] = '0004_position_valuations'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# table → its foreign keys at 0004: (column, referred table, referred column, ON DELETE)
FOREIGN_KEYS = {
    'position_valuations': [('position_id', 'positions', 'id', 'CASCADE'),
                            ('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'position_greeks': [('position_id', 'positions', 'id', 'CASCADE'),
                        ('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'position_factor_exposures': [('position_id', 'positions', 'id', 'CASCADE'),
                                  ('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'portfolio_factor_exposures': [('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'market_risk_results': [('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'stress_test_results': [('portfolio_id', 'portfolios', 'id', 'CASCADE'),
                            ('scenario_id', 'stress_scenarios', 'scenario_id', None)],
    'correlation_runs': [('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'correlation_matrices': [('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'correlation_clusters': [('portfolio_id', 'portfolios', 'id', 'CASCADE')],
    'portfolio_snapshots': [('portfolio_id', 'portfolios', 'id', 'CASCADE')],
}
# what each parent's delete trigger deletes: (tables, their column holding the parent's id)
CASCADES = {
    'portfolios': ([t for t, fks in FOREIGN_KEYS.items() if any(c == 'portfolio_id' for c, *_ in fks)],
                   'portfolio_id'),
    'positions': ([t for t, fks in FOREIGN_KEYS.items() if any(c == 'position_id' for c, *_ in fks)],
                  'position_id'),
}
VIEW = 'pairwise_correlations'  # over correlation_matrices
SCENARIO_MESSAGE = ('stress scenario has results in stress_test_results: '
                    'deactivate it (is_active = false) instead of deleting it')


def _fk_name(table: str, column: str, referred: str) -> str:
    return f'fk_{table}_{column}_{referred}'  # the naming convention's


def _sqlite() -> bool:
    return op.get_bind().dialect.name == 'sqlite'


def upgrade() -> None:
    _rebuild_constraints(add=False)
    if _sqlite():
        for parent, (tables, column) in CASCADES.items():
            body = ' '.join(f'DELETE FROM {t} WHERE {column} = OLD.id;' for t in tables)
            op.execute(f'CREATE TRIGGER {parent}_delete_results AFTER DELETE ON {parent} '
                       f'FOR EACH ROW BEGIN {body} END')
        op.execute('CREATE TRIGGER stress_scenarios_keep_results BEFORE DELETE ON stress_scenarios FOR EACH ROW '
                   'WHEN EXISTS (SELECT 1 FROM stress_test_results WHERE scenario_id = OLD.scenario_id) '
                   f"BEGIN SELECT RAISE(ABORT, '{SCENARIO_MESSAGE}'); END")
        return
    for parent, (tables, column) in CASCADES.items():
        body = ' '.join(f'DELETE FROM {t} WHERE {column} IN (SELECT id FROM deleted_rows);' for t in tables)
        op.execute(f'CREATE FUNCTION {parent}_delete_results() RETURNS trigger LANGUAGE plpgsql AS $$ '
                   f'BEGIN {body} RETURN NULL; END $$')
        op.execute(f'CREATE TRIGGER {parent}_delete_results AFTER DELETE ON {parent} '
                   f'REFERENCING OLD TABLE AS deleted_rows FOR EACH STATEMENT '
                   f'EXECUTE FUNCTION {parent}_delete_results()')
    op.execute("CREATE FUNCTION stress_scenarios_keep_results() RETURNS trigger LANGUAGE plpgsql AS $$ "
               "BEGIN IF EXISTS (SELECT 1 FROM stress_test_results WHERE scenario_id = OLD.scenario_id) THEN "
               f"RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = '{SCENARIO_MESSAGE}', "
               "DETAIL = format('scenario_id %s', OLD.scenario_id); END IF; RETURN OLD; END $$")
    op.execute('CREATE TRIGGER stress_scenarios_keep_results BEFORE DELETE ON stress_scenarios '
               'FOR EACH ROW EXECUTE FUNCTION stress_scenarios_keep_results()')


def downgrade() -> None:
    for trigger, table in (('portfolios_delete_results', 'portfolios'), ('positions_delete_results', 'positions'),
                           ('stress_scenarios_keep_results', 'stress_scenarios')):
        if _sqlite():
            op.execute(f'DROP TRIGGER {trigger}')
        else:
            op.execute(f'DROP TRIGGER {trigger} ON {table}')
            op.execute(f'DROP FUNCTION {trigger}()')
    for table, fks in FOREIGN_KEYS.items():  # orphans would make restoring the constraints fail
        for column, referred, referred_column, _ in fks:
            op.execute(f'DELETE FROM {table} WHERE {column} IS NOT NULL AND NOT EXISTS '
                       f'(SELECT 1 FROM {referred} WHERE {referred}.{referred_column} = {table}.{column})')
    _rebuild_constraints(add=True)


def _rebuild_constraints(add: bool) -> None:
    """Drop (add=False) or create (add=True) the FOREIGN_KEYS constraints."""
    if not _sqlite():
        for table, fks in FOREIGN_KEYS.items():
            for column, referred, referred_column, ondelete in fks:
                name = _fk_name(table, column, referred)
                if add:
                    op.create_foreign_key(name, table, referred, [column], [referred_column], ondelete=ondelete)
                else:
                    op.drop_constraint(name, table, type_='foreignkey')
        return
    conn = op.get_bind()
    view = conn.execute(text("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = :n"), {'n': VIEW}).scalar()
    op.execute(f'DROP VIEW {VIEW}')  # SQLite would refuse to rename the rebuilt table under it
    for table, fks in FOREIGN_KEYS.items():
        with op.batch_alter_table(table, recreate='always') as batch_op:
            for column, referred, referred_column, ondelete in fks:
                name = _fk_name(table, column, referred)
                if add:
                    batch_op.create_foreign_key(name, referred, [column], [referred_column], ondelete=ondelete)
                else:
                    batch_op.drop_constraint(name, type_='foreignkey')
    op.execute(view)
