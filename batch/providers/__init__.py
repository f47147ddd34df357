"""Market-data providers behind one interface (SPEC §5.1).

`sample` (the default) serves the bundled real adjusted closes offline. Network providers
(`yfinance`, `fmp`, `polygon`) plug in behind the same two methods. The interface lives in
`base`, each implementation in its own module; `get_provider` picks one from the settings.
"""

from __future__ import annotations

from batch.errors import ConfigError
from batch.fetching import AuthenticationError, DailyQuota, RateLimiter, RetryPolicy
from batch.providers.base import (
    PRICE_COLUMNS,
    MarketDataProvider,
    NotFetching,
    PriceBatch,
    ProfileBatch,
)
from batch.providers.sample import SampleProvider
from batch.settings import Settings

__all__ = ["PRICE_COLUMNS", "MarketDataProvider", "NotFetching", "PriceBatch", "ProfileBatch",
           "SampleProvider", "get_provider", "retry_policy"]


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(attempts=settings.max_retry_attempts, max_total_delay=settings.max_retry_delay_seconds)


def get_provider(settings: Settings) -> MarketDataProvider:
    """The provider named by MARKET_DATA_PROVIDER. Raises ConfigError when it cannot be used
    (a missing API key or an optional package not installed)."""
    name = settings.market_data_provider
    if name == "sample":
        return SampleProvider()
    if name == "yfinance":
        from batch.providers.yahoo import YFinanceProvider

        return YFinanceProvider(retry_policy(settings), RateLimiter(settings.yfinance_requests_per_minute),
                                timeout=settings.provider_timeout_seconds)
    from batch.providers.rest import FmpProvider, PolygonProvider

    cls, key, per_minute, per_day = {
        "fmp": (FmpProvider, settings.fmp_api_key, settings.fmp_requests_per_minute, settings.fmp_requests_per_day),
        "polygon": (PolygonProvider, settings.polygon_api_key, settings.polygon_requests_per_minute, None),
    }[name]
    quota = DailyQuota(per_day) if per_day is not None else None
    try:
        return cls(key.reveal() if key is not None else None, retry_policy(settings), RateLimiter(per_minute, quota=quota),
                   read_timeout=settings.provider_timeout_seconds)
    except AuthenticationError as exc:
        raise ConfigError(str(exc)) from None
