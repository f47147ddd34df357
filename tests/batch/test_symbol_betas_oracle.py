"""The stored `symbol_factor_betas` of the demo date equal statsmodels' OLS (SPEC §6.3), refitted
here symbol by symbol from the closes stored in `market_prices` — every column of every row:
beta (capped at ±5), std_error, t_stat, R², observations, capped, quality_flag, and the NULL rows
of the factors without data."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sqlalchemy import select
from sqlalchemy.orm import Session

from batch import calendar
from models import FactorDefinition, MarketPrice, SymbolFactorBeta

AS_OF = date(2022, 12, 28)
TOL = {"abs": 1e-8, "rel": 1e-8}  # SPEC §6.3: statsmodels to 1e-8


def test_stored_symbol_betas_equal_statsmodels_fits_from_stored_closes(seeded, engine):
    seeded("--date", AS_OF.isoformat())
    sessions = calendar.sessions_back(AS_OF, 91)  # 90 returns
    with Session(engine) as s:
        proxies = dict(s.execute(select(FactorDefinition.name, FactorDefinition.proxy_symbol).where(
            FactorDefinition.is_active.is_(True))).all())
        prices = s.execute(select(MarketPrice.date, MarketPrice.symbol, MarketPrice.close).where(
            MarketPrice.date >= sessions[0], MarketPrice.date <= AS_OF)).all()
        stored = s.scalars(select(SymbolFactorBeta).where(SymbolFactorBeta.as_of_date == AS_OF)).all()
    closes = pd.DataFrame(prices, columns=["date", "symbol", "close"]).pivot(
        index="date", columns="symbol", values="close").reindex(sessions).astype(float)
    returns = (closes / closes.shift(1) - 1).iloc[1:]
    market = returns[proxies["Market"]]
    styles = ["Value", "Growth", "Momentum", "Quality", "Size", "Low Volatility"]
    joint = pd.DataFrame({"Market": market} | {
        f: returns[proxies[f]] - market for f in styles if proxies.get(f) in returns.columns})
    models = [joint]
    if proxies.get("Interest Rate") in returns.columns:  # a separate univariate fit
        models.append(returns[proxies["Interest Rate"]].rename("Interest Rate").to_frame())
    fitted = [f for x in models for f in x.columns]
    missing = [f for f in ["Market", *styles, "Interest Rate"] if f not in fitted]
    assert "Market" in fitted and len(fitted) >= 5  # the demo has data for most factors

    rows = {(r.symbol, r.factor): r for r in stored}
    symbols = sorted({r.symbol for r in stored})
    assert {"AAPL", "XOM", "MSFT", "JPM"} <= set(symbols)
    checked = 0
    for symbol in symbols:
        for x in models:
            factors_ = list(x.columns)
            data = pd.concat([returns[symbol].rename("y"), x], axis=1).dropna()
            fit = sm.OLS(data["y"], sm.add_constant(data[factors_])).fit()
            for factor in factors_:
                row = rows[symbol, factor]
                raw = float(fit.params[factor])
                assert row.observations == int(fit.nobs) == 90 and row.window_days == 90
                assert row.beta == pytest.approx(float(np.clip(raw, -5.0, 5.0)), **TOL), (symbol, factor)
                assert row.capped == (abs(raw) > 5.0)
                if fit.ssr <= 1e-20 * fit.centered_tss:  # a proxy on its own factor: no statistics
                    assert (row.std_error, row.t_stat, row.quality_flag) == (None, None, "exact_fit")
                else:
                    assert row.std_error == pytest.approx(float(fit.bse[factor]), **TOL), (symbol, factor)
                    assert row.t_stat == pytest.approx(float(fit.tvalues[factor]), **TOL), (symbol, factor)
                    assert row.quality_flag == "full_history"
                assert row.r_squared == pytest.approx(float(fit.rsquared), **TOL), (symbol, factor)
                checked += 1
        for factor in missing:
            row = rows[symbol, factor]
            assert (row.beta, row.std_error, row.t_stat, row.r_squared, row.observations, row.capped,
                    row.quality_flag) == (None, None, None, None, 0, False, "factor_unavailable")
    assert len(stored) == checked + len(missing) * len(symbols)
