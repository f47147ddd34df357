"""baseline: every SPEC section 4 table

Revision ID: 0001_baseline
Revises: 
Create Date: 2026-11-23 07:02:09.319445
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0001_baseline'
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('batch_runs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('as_of_start', sa.Date(), nullable=True),
    sa.Column('as_of_end', sa.Date(), nullable=True),
    sa.Column('portfolio_filter', sa.JSON(), nullable=True),
    sa.Column('total_units', sa.Integer(), nullable=False),
    sa.Column('completed_units', sa.Integer(), nullable=False),
    sa.Column('current_unit', sa.String(length=100), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_runs'))
    )
    op.create_table('company_profiles',
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('company_name', sa.String(length=200), nullable=True),
    sa.Column('sector', sa.String(length=100), nullable=True),
    sa.Column('industry', sa.String(length=200), nullable=True),
    sa.Column('exchange', sa.String(length=50), nullable=True),
    sa.Column('country', sa.String(length=50), nullable=True),
    sa.Column('market_cap', sa.Float(), nullable=True),
    sa.Column('is_etf', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('symbol', name=op.f('pk_company_profiles'))
    )
    op.create_table('factor_correlations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('factor_1', sa.String(length=32), nullable=False),
    sa.Column('factor_2', sa.String(length=32), nullable=False),
    sa.Column('correlation', sa.Float(), nullable=False),
    sa.Column('observations', sa.Integer(), nullable=False),
    sa.Column('decay', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_factor_correlations')),
    sa.UniqueConstraint('as_of_date', 'factor_1', 'factor_2', name='uq_factor_correlations_key')
    )
    op.create_table('factor_definitions',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('proxy_symbol', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('display_order', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_factor_definitions'))
    )
    op.create_table('market_prices',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('date', sa.Date(), nullable=False),
    sa.Column('open', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=True),
    sa.Column('high', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=True),
    sa.Column('low', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=True),
    sa.Column('close', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=False),
    sa.Column('volume', sa.BigInteger(), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_market_prices')),
    sa.UniqueConstraint('symbol', 'date', name='uq_market_prices_symbol_date')
    )
    op.create_table('portfolios',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('cash_balance', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_portfolios'))
    )
    op.create_table('stress_scenarios',
    sa.Column('scenario_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('shocks', sa.JSON(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('scenario_id', name=op.f('pk_stress_scenarios'))
    )
    op.create_table('symbol_factor_betas',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('factor', sa.String(length=32), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('beta', sa.Float(), nullable=True),
    sa.Column('std_error', sa.Float(), nullable=True),
    sa.Column('t_stat', sa.Float(), nullable=True),
    sa.Column('r_squared', sa.Float(), nullable=True),
    sa.Column('observations', sa.Integer(), nullable=False),
    sa.Column('window_days', sa.Integer(), nullable=False),
    sa.Column('capped', sa.Boolean(), nullable=False),
    sa.Column('quality_flag', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_symbol_factor_betas')),
    sa.UniqueConstraint('symbol', 'factor', 'as_of_date', name='uq_symbol_factor_betas_key')
    )
    op.create_table('batch_job_results',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=True),
    sa.Column('portfolio_id', sa.Uuid(), nullable=True),
    sa.Column('job', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['batch_runs.id'], name=op.f('fk_batch_job_results_run_id_batch_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batch_job_results')),
    sa.UniqueConstraint('run_id', 'as_of_date', 'portfolio_id', 'job', name='uq_batch_job_results_key')
    )
    with op.batch_alter_table('batch_job_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_job_results_run_id'), ['run_id'], unique=False)

    op.create_table('correlation_clusters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('cluster_number', sa.Integer(), nullable=False),
    sa.Column('symbols', sa.JSON(), nullable=False),
    sa.Column('avg_correlation', sa.Float(), nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_correlation_clusters_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_correlation_clusters')),
    sa.UniqueConstraint('portfolio_id', 'as_of_date', 'cluster_number', name='uq_correlation_clusters_key')
    )
    op.create_table('correlation_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('window_days', sa.Integer(), nullable=False),
    sa.Column('avg_abs_correlation', sa.Float(), nullable=True),
    sa.Column('weighted_correlation', sa.Float(), nullable=True),
    sa.Column('effective_positions', sa.Float(), nullable=True),
    sa.Column('positions_included', sa.Integer(), nullable=False),
    sa.Column('positions_excluded', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_correlation_runs_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_correlation_runs')),
    sa.UniqueConstraint('portfolio_id', 'as_of_date', 'window_days', name='uq_correlation_runs_key')
    )
    op.create_table('market_risk_results',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('scenario', sa.String(length=64), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('shock', sa.Float(), nullable=False),
    sa.Column('pnl', sa.Float(), nullable=False),
    sa.Column('pnl_pct', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_market_risk_results_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_market_risk_results')),
    sa.UniqueConstraint('portfolio_id', 'scenario', 'as_of_date', name='uq_market_risk_results_key')
    )
    op.create_table('pairwise_correlations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
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
    op.create_table('portfolio_factor_exposures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('factor', sa.String(length=32), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('beta', sa.Float(), nullable=True),
    sa.Column('exposure_dollar', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_portfolio_factor_exposures_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_portfolio_factor_exposures')),
    sa.UniqueConstraint('portfolio_id', 'factor', 'as_of_date', name='uq_portfolio_factor_exposures_key')
    )
    op.create_table('portfolio_snapshots',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('snapshot_date', sa.Date(), nullable=False),
    sa.Column('total_value', sa.Float(), nullable=False),
    sa.Column('cash_value', sa.Float(), nullable=False),
    sa.Column('long_value', sa.Float(), nullable=False),
    sa.Column('short_value', sa.Float(), nullable=False),
    sa.Column('gross_exposure', sa.Float(), nullable=False),
    sa.Column('net_exposure', sa.Float(), nullable=False),
    sa.Column('private_value', sa.Float(), nullable=False),
    sa.Column('daily_pnl', sa.Float(), nullable=False),
    sa.Column('daily_return', sa.Float(), nullable=True),
    sa.Column('cumulative_pnl', sa.Float(), nullable=False),
    sa.Column('num_positions', sa.Integer(), nullable=False),
    sa.Column('num_long', sa.Integer(), nullable=False),
    sa.Column('num_short', sa.Integer(), nullable=False),
    sa.Column('num_private', sa.Integer(), nullable=False),
    sa.Column('portfolio_delta', sa.Float(), nullable=True),
    sa.Column('portfolio_gamma', sa.Float(), nullable=True),
    sa.Column('portfolio_theta', sa.Float(), nullable=True),
    sa.Column('portfolio_vega', sa.Float(), nullable=True),
    sa.Column('market_beta', sa.Float(), nullable=True),
    sa.Column('data_quality', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_portfolio_snapshots_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_portfolio_snapshots')),
    sa.UniqueConstraint('portfolio_id', 'snapshot_date', name='uq_portfolio_snapshots_key')
    )
    op.create_table('positions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('position_type', sa.String(length=8), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=False),
    sa.Column('entry_price', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=False),
    sa.Column('entry_date', sa.Date(), nullable=False),
    sa.Column('exit_date', sa.Date(), nullable=True),
    sa.Column('investment_class', sa.String(length=16), nullable=True),
    sa.Column('investment_subtype', sa.String(length=64), nullable=True),
    sa.Column('underlying_symbol', sa.String(length=32), nullable=True),
    sa.Column('strike_price', sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=True),
    sa.Column('expiration_date', sa.Date(), nullable=True),
    sa.Column('implied_volatility', sa.Float(), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_positions_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_positions'))
    )
    with op.batch_alter_table('positions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_positions_portfolio_id'), ['portfolio_id'], unique=False)

    op.create_table('stress_test_results',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('scenario_id', sa.String(length=64), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('direct_pnl', sa.Float(), nullable=False),
    sa.Column('correlated_pnl', sa.Float(), nullable=False),
    sa.Column('correlation_effect', sa.Float(), nullable=False),
    sa.Column('pnl_pct', sa.Float(), nullable=True),
    sa.Column('exceeds_equity', sa.Boolean(), nullable=False),
    sa.Column('factor_impacts', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_stress_test_results_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scenario_id'], ['stress_scenarios.scenario_id'], name=op.f('fk_stress_test_results_scenario_id_stress_scenarios')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stress_test_results')),
    sa.UniqueConstraint('portfolio_id', 'scenario_id', 'as_of_date', name='uq_stress_test_results_key')
    )
    op.create_table('position_factor_exposures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('position_id', sa.Uuid(), nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('factor', sa.String(length=32), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('beta', sa.Float(), nullable=False),
    sa.Column('exposure_dollar', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_position_factor_exposures_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['position_id'], ['positions.id'], name=op.f('fk_position_factor_exposures_position_id_positions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_position_factor_exposures')),
    sa.UniqueConstraint('position_id', 'factor', 'as_of_date', name='uq_position_factor_exposures_key')
    )
    with op.batch_alter_table('position_factor_exposures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_position_factor_exposures_portfolio_id'), ['portfolio_id'], unique=False)

    op.create_table('position_greeks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('position_id', sa.Uuid(), nullable=False),
    sa.Column('portfolio_id', sa.Uuid(), nullable=False),
    sa.Column('as_of_date', sa.Date(), nullable=False),
    sa.Column('model_price', sa.Float(), nullable=True),
    sa.Column('underlying_price', sa.Float(), nullable=True),
    sa.Column('volatility', sa.Float(), nullable=True),
    sa.Column('delta', sa.Float(), nullable=True),
    sa.Column('gamma', sa.Float(), nullable=True),
    sa.Column('theta', sa.Float(), nullable=True),
    sa.Column('vega', sa.Float(), nullable=True),
    sa.Column('rho', sa.Float(), nullable=True),
    sa.Column('dollar_delta', sa.Float(), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['portfolio_id'], ['portfolios.id'], name=op.f('fk_position_greeks_portfolio_id_portfolios'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['position_id'], ['positions.id'], name=op.f('fk_position_greeks_position_id_positions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_position_greeks')),
    sa.UniqueConstraint('position_id', 'as_of_date', name='uq_position_greeks_key')
    )
    with op.batch_alter_table('position_greeks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_position_greeks_portfolio_id'), ['portfolio_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('position_greeks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_position_greeks_portfolio_id'))

    op.drop_table('position_greeks')
    with op.batch_alter_table('position_factor_exposures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_position_factor_exposures_portfolio_id'))

    op.drop_table('position_factor_exposures')
    op.drop_table('stress_test_results')
    with op.batch_alter_table('positions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_positions_portfolio_id'))

    op.drop_table('positions')
    op.drop_table('portfolio_snapshots')
    op.drop_table('portfolio_factor_exposures')
    op.drop_table('pairwise_correlations')
    op.drop_table('market_risk_results')
    op.drop_table('correlation_runs')
    op.drop_table('correlation_clusters')
    with op.batch_alter_table('batch_job_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_job_results_run_id'))

    op.drop_table('batch_job_results')
    op.drop_table('symbol_factor_betas')
    op.drop_table('stress_scenarios')
    op.drop_table('portfolios')
    op.drop_table('market_prices')
    op.drop_table('factor_definitions')
    op.drop_table('factor_correlations')
    op.drop_table('company_profiles')
    op.drop_table('batch_runs')
