"""ORM tables only (SPEC §4)."""

from models.schema import (  # noqa: F401
    Base,
    Portfolio,
    Position,
    MarketPrice,
    CompanyProfile,
    FactorDefinition,
    StressScenario,
    SymbolFactorBeta,
    PositionFactorExposure,
    PortfolioFactorExposure,
    PositionGreeks,
    MarketRiskResult,
    StressTestResult,
    CorrelationRun,
    PairwiseCorrelation,
    CorrelationCluster,
    FactorCorrelation,
    PortfolioSnapshot,
    BatchRun,
    BatchJobResult,
)
