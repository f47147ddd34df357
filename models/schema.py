"""ORM tables (SPEC §4). Generic types only, so PostgreSQL and SQLite share one schema.

Money and quantities are `Numeric` returned as Python floats; computed statistics are `Float`
(double precision). The natural key of every result table (and of `market_prices`) is its primary
key, `pk_<table>`; re-runs replace rows by that key. The job's chunk DELETE (a chunk's portfolios,
one date) reads an index leading with (portfolio_id, date) on every per-portfolio result table: the
primary key where it holds both (portfolio-level tables: portfolio, date, then the name), else
`ix_<table>_portfolio_id_as_of_date` (tables keyed by position; migration 0006), so its cost does
not grow with the dates stored. The result tables have no foreign keys (their per-row checks cost a
third of the job's result writes): triggers created by migration 0005 delete a deleted portfolio's
or position's result rows and refuse to delete a stress scenario that has results. Only the
migrations (`batch.db.migrate`, `create_if_empty`) create the schema, never
`Base.metadata.create_all`, so every database has the triggers. `batch_job_results` is a run record,
not a result: it keeps a surrogate id (its `portfolio_id` is NULL for global engines, which a
primary key column cannot be) and a named unique constraint. `pairwise_correlations` is a view
(`PairwiseCorrelation`, mapped on its own metadata).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Surrogate key (batch_job_results only): BIGINT on PostgreSQL, INTEGER (rowid alias,
# autoincrementing) on SQLite.
RowId = BigInteger().with_variant(Integer(), "sqlite")
Money = Numeric(20, 6, asdecimal=False)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _rowid() -> Mapped[int]:
    return mapped_column(RowId, primary_key=True, autoincrement=True)


# --- reference data -------------------------------------------------------------------------


class Portfolio(Base):
    __tablename__ = "portfolios"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cash_balance: Mapped[float] = mapped_column(Money, default=0.0)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Position(Base):
    __tablename__ = "positions"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), index=True
    )
    symbol: Mapped[str] = mapped_column(String(64))
    position_type: Mapped[str] = mapped_column(String(8))  # LONG SHORT LC LP SC SP
    quantity: Mapped[float] = mapped_column(Money)  # negative for SHORT/SC/SP
    entry_price: Mapped[float] = mapped_column(Money)
    entry_date: Mapped[date] = mapped_column(Date)
    exit_date: Mapped[date | None] = mapped_column(Date)
    investment_class: Mapped[str | None] = mapped_column(String(16))  # PUBLIC OPTIONS PRIVATE
    investment_subtype: Mapped[str | None] = mapped_column(String(64))
    underlying_symbol: Mapped[str | None] = mapped_column(String(32))
    strike_price: Mapped[float | None] = mapped_column(Money)
    expiration_date: Mapped[date | None] = mapped_column(Date)
    implied_volatility: Mapped[float | None] = mapped_column(Float)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MarketPrice(Base):
    __tablename__ = "market_prices"
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    date: Mapped[date] = mapped_column(Date, primary_key=True)
    open: Mapped[float | None] = mapped_column(Money)
    high: Mapped[float | None] = mapped_column(Money)
    low: Mapped[float | None] = mapped_column(Money)
    close: Mapped[float] = mapped_column(Money)  # adjusted close
    volume: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CompanyProfile(Base):
    __tablename__ = "company_profiles"
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    company_name: Mapped[str | None] = mapped_column(String(200))
    sector: Mapped[str | None] = mapped_column(String(100))
    industry: Mapped[str | None] = mapped_column(String(200))
    exchange: Mapped[str | None] = mapped_column(String(50))
    country: Mapped[str | None] = mapped_column(String(50))
    market_cap: Mapped[float | None] = mapped_column(Float)
    is_etf: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProfileAbsence(Base):
    """A symbol the provider `source` reported as having no company profile (`reason`, e.g.
    `unknown_symbol`) at `checked_at`: not asked again for a while (batch.sync)."""

    __tablename__ = "profile_absences"
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(32))
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProviderRequestCount(Base):
    """Requests made to `provider` on the UTC calendar `day` (its daily quota), across runs."""

    __tablename__ = "provider_request_counts"
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    requests: Mapped[int] = mapped_column(Integer)


class FactorDefinition(Base):
    __tablename__ = "factor_definitions"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    proxy_symbol: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # market, style, rates
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    display_order: Mapped[int] = mapped_column(Integer)


class StressScenario(Base):
    __tablename__ = "stress_scenarios"
    scenario_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    shocks: Mapped[dict] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


# --- results ----------------------------------------------------------------------------------


class SymbolFactorBeta(Base):
    __tablename__ = "symbol_factor_betas"
    # the engine replaces and reads a date's rows by as_of_date, last in the key (migration 0007)
    __table_args__ = (Index("ix_symbol_factor_betas_as_of_date", "as_of_date"),)
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    factor: Mapped[str] = mapped_column(String(32), primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    beta: Mapped[float | None] = mapped_column(Float)
    std_error: Mapped[float | None] = mapped_column(Float)
    t_stat: Mapped[float | None] = mapped_column(Float)
    r_squared: Mapped[float | None] = mapped_column(Float)
    observations: Mapped[int] = mapped_column(Integer)
    window_days: Mapped[int] = mapped_column(Integer)
    capped: Mapped[bool] = mapped_column(Boolean, default=False)
    quality_flag: Mapped[str] = mapped_column(String(32))


class PositionFactorExposure(Base):
    __tablename__ = "position_factor_exposures"
    __table_args__ = (Index("ix_position_factor_exposures_portfolio_id_as_of_date", "portfolio_id", "as_of_date"),)
    position_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    factor: Mapped[str] = mapped_column(String(32), primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    beta: Mapped[float] = mapped_column(Float)
    exposure_dollar: Mapped[float] = mapped_column(Float)


class PortfolioFactorExposure(Base):
    __tablename__ = "portfolio_factor_exposures"
    __table_args__ = (PrimaryKeyConstraint("portfolio_id", "as_of_date", "factor"),)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    factor: Mapped[str] = mapped_column(String(32), primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    beta: Mapped[float | None] = mapped_column(Float)
    exposure_dollar: Mapped[float] = mapped_column(Float)


class PositionGreeks(Base):
    __tablename__ = "position_greeks"
    __table_args__ = (Index("ix_position_greeks_portfolio_id_as_of_date", "portfolio_id", "as_of_date"),)
    position_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    model_price: Mapped[float | None] = mapped_column(Float)
    underlying_price: Mapped[float | None] = mapped_column(Float)
    volatility: Mapped[float | None] = mapped_column(Float)
    delta: Mapped[float | None] = mapped_column(Float)
    gamma: Mapped[float | None] = mapped_column(Float)
    theta: Mapped[float | None] = mapped_column(Float)
    vega: Mapped[float | None] = mapped_column(Float)
    rho: Mapped[float | None] = mapped_column(Float)
    dollar_delta: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32))


class PositionValuation(Base):
    """One row per position valued for a portfolio-date (SPEC §6.1), held or skipped: `price`
    (dollars per share or per contract unit; an option's model price for `price_source =
    model`), `market_value` signed dollars (quantity × price × multiplier, shorts negative),
    NULL with the reason in `flags` when the position could not be priced (never 0)."""

    __tablename__ = "position_valuations"
    __table_args__ = (Index("ix_position_valuations_portfolio_id_as_of_date", "portfolio_id", "as_of_date"),)
    position_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[float] = mapped_column(Money)
    price: Mapped[float | None] = mapped_column(Float)
    price_date: Mapped[date | None] = mapped_column(Date)
    price_source: Mapped[str | None] = mapped_column(String(16))  # market, mark, entry, intrinsic, model
    market_value: Mapped[float | None] = mapped_column(Float)
    flags: Mapped[list] = mapped_column(JSON)


class MarketRiskResult(Base):
    __tablename__ = "market_risk_results"
    __table_args__ = (PrimaryKeyConstraint("portfolio_id", "as_of_date", "scenario"),)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    scenario: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    shock: Mapped[float] = mapped_column(Float)
    pnl: Mapped[float] = mapped_column(Float)
    pnl_pct: Mapped[float | None] = mapped_column(Float)


class StressTestResult(Base):
    __tablename__ = "stress_test_results"
    __table_args__ = (PrimaryKeyConstraint("portfolio_id", "as_of_date", "scenario_id"),)
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    scenario_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    direct_pnl: Mapped[float] = mapped_column(Float)
    correlated_pnl: Mapped[float] = mapped_column(Float)
    correlation_effect: Mapped[float] = mapped_column(Float)
    pnl_pct: Mapped[float | None] = mapped_column(Float)
    exceeds_equity: Mapped[bool] = mapped_column(Boolean, default=False)
    factor_impacts: Mapped[dict] = mapped_column(JSON)


class CorrelationRun(Base):
    __tablename__ = "correlation_runs"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    window_days: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    avg_abs_correlation: Mapped[float | None] = mapped_column(Float)
    weighted_correlation: Mapped[float | None] = mapped_column(Float)
    effective_positions: Mapped[float | None] = mapped_column(Float)
    positions_included: Mapped[int] = mapped_column(Integer)
    positions_excluded: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))


class CorrelationMatrix(Base):
    """A portfolio's correlation matrix on one as-of date (SPEC §4, §6.6): one row, not one per pair.

    `symbols`: the included symbols, sorted; `matrix`: row-major list of rows, ρ[i][j] (symmetric,
    1.0 on the diagonal), null where a pair has fewer than 20 overlapping returns; `observations`:
    the overlap counts, same shape (the diagonal: each symbol's own count; null on the diagonal of
    rows migrated from the 0002 pairs table, which never held it). Readers of single pairs use the
    `pairwise_correlations` view."""

    __tablename__ = "correlation_matrices"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    window_days: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    symbols: Mapped[list] = mapped_column(JSON)
    matrix: Mapped[list] = mapped_column(JSON)
    observations: Mapped[list] = mapped_column(JSON)


class ViewBase(DeclarativeBase):
    """Read-only classes mapped onto SQL views. Their own metadata: `Base.metadata` (what the
    migrations must match, what tests truncate) holds tables only; the views are created by the
    migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PairwiseCorrelation(ViewBase):
    """The `pairwise_correlations` view (migration 0003) over `correlation_matrices`: each
    unordered pair of a matrix once, `symbol_1` < `symbol_2`, with its ρ (None when < 20 overlaps)
    and overlap count. Read-only: write `CorrelationMatrix` rows."""

    __tablename__ = "pairwise_correlations"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    window_days: Mapped[int] = mapped_column(Integer)
    symbol_1: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol_2: Mapped[str] = mapped_column(String(64), primary_key=True)
    correlation: Mapped[float | None] = mapped_column(Float)
    observations: Mapped[int] = mapped_column(Integer)


class CorrelationCluster(Base):
    __tablename__ = "correlation_clusters"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    cluster_number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    symbols: Mapped[list] = mapped_column(JSON)
    avg_correlation: Mapped[float] = mapped_column(Float)
    weight: Mapped[float] = mapped_column(Float)


class FactorCorrelation(Base):
    __tablename__ = "factor_correlations"
    as_of_date: Mapped[date] = mapped_column(Date, primary_key=True)
    factor_1: Mapped[str] = mapped_column(String(32), primary_key=True)
    factor_2: Mapped[str] = mapped_column(String(32), primary_key=True)
    correlation: Mapped[float] = mapped_column(Float)
    observations: Mapped[int] = mapped_column(Integer)
    decay: Mapped[float] = mapped_column(Float)


class PortfolioSnapshot(Base):
    __tablename__ = "portfolio_snapshots"
    portfolio_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    snapshot_date: Mapped[date] = mapped_column(Date, primary_key=True)
    total_value: Mapped[float] = mapped_column(Float)
    cash_value: Mapped[float] = mapped_column(Float)
    long_value: Mapped[float] = mapped_column(Float)
    short_value: Mapped[float] = mapped_column(Float)
    gross_exposure: Mapped[float] = mapped_column(Float)
    net_exposure: Mapped[float] = mapped_column(Float)
    private_value: Mapped[float] = mapped_column(Float)
    daily_pnl: Mapped[float] = mapped_column(Float)
    daily_return: Mapped[float | None] = mapped_column(Float)
    cumulative_pnl: Mapped[float] = mapped_column(Float)
    num_positions: Mapped[int] = mapped_column(Integer)
    num_long: Mapped[int] = mapped_column(Integer)
    num_short: Mapped[int] = mapped_column(Integer)
    num_private: Mapped[int] = mapped_column(Integer)
    portfolio_delta: Mapped[float | None] = mapped_column(Float)
    portfolio_gamma: Mapped[float | None] = mapped_column(Float)
    portfolio_theta: Mapped[float | None] = mapped_column(Float)
    portfolio_vega: Mapped[float | None] = mapped_column(Float)
    market_beta: Mapped[float | None] = mapped_column(Float)
    data_quality: Mapped[dict] = mapped_column(JSON)


# --- run records ------------------------------------------------------------------------------


class BatchRun(Base):
    __tablename__ = "batch_runs"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # running success partial failed skipped interrupted
    trigger: Mapped[str] = mapped_column(String(16))  # cron, manual
    as_of_start: Mapped[date | None] = mapped_column(Date)
    as_of_end: Mapped[date | None] = mapped_column(Date)
    portfolio_filter: Mapped[list | None] = mapped_column(JSON)
    total_units: Mapped[int] = mapped_column(Integer, default=0)
    completed_units: Mapped[int] = mapped_column(Integer, default=0)
    current_unit: Mapped[str | None] = mapped_column(String(100))
    summary: Mapped[dict | None] = mapped_column(JSON)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)


class BatchJobResult(Base):
    """One engine's record for one unit (or one global engine's for a date). A run record, not a
    result table: it keeps a surrogate id, because `portfolio_id` is NULL for the global engines
    and a primary-key column cannot be NULL on PostgreSQL; the named unique constraint is its key."""

    __tablename__ = "batch_job_results"
    __table_args__ = (
        UniqueConstraint("run_id", "as_of_date", "portfolio_id", "job", name="uq_batch_job_results_key"),
    )
    id: Mapped[int] = _rowid()
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batch_runs.id", ondelete="CASCADE"), index=True)
    as_of_date: Mapped[date | None] = mapped_column(Date)
    portfolio_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    job: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # success skipped failed
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON)


