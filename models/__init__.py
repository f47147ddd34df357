"""ORM tables only (SPEC §4)."""

from models.schema import (  # noqa: F401
    Base,
    BatchJobResult,
    BatchRun,
    CompanyProfile,
    CorrelationCluster,
    CorrelationRun,
    FactorCorrelation,
    FactorDefinition,
    MarketPrice,
    MarketRiskResult,
    PairwiseCorrelation,
    Portfolio,
    PortfolioFactorExposure,
    PortfolioSnapshot,
    Position,
    PositionFactorExposure,
    PositionGreeks,
    StressScenario,
    StressTestResult,
    SymbolFactorBeta,
)
