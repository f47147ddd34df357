"""Plain position data shared by the engines, and the symbol classification rule (SPEC §9)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from calculations.options import MalformedOccSymbol, is_occ_symbol, parse_occ

PUBLIC, OPTIONS, PRIVATE = "PUBLIC", "OPTIONS", "PRIVATE"
OPTION_TYPES = frozenset({"LC", "LP", "SC", "SP"})
SHORT_TYPES = frozenset({"SHORT", "SC", "SP"})
POSITION_TYPES = frozenset({"LONG", "SHORT"}) | OPTION_TYPES
OPTION_MULTIPLIER = 100.0

# Checked before the option pattern: `BX_PRIVATE_EQUITY` must never be read as an option.
PRIVATE_PATTERNS = (
    "PRIVATE", "FUND", "_VC_", "_PE_", "REIT", "SIGMA", "HOME_", "RENTAL_", "ART_", "CRYPTO_",
    "TREASURY", "MONEY_MARKET",
)


def classify_symbol(symbol: str) -> str:
    """PRIVATE if any private pattern occurs in the upper-cased symbol, else OPTIONS for a valid
    OCC option symbol, else PUBLIC."""
    upper = symbol.strip().upper()
    if any(pattern in upper for pattern in PRIVATE_PATTERNS):
        return PRIVATE
    if is_occ_symbol(upper):
        return OPTIONS
    return PUBLIC


def option_root(symbol: str) -> str | None:
    """The root (underlying) of an OCC option symbol, or None if it is not one."""
    try:
        return parse_occ(symbol.strip().upper()).root
    except MalformedOccSymbol:
        return None


@dataclass(frozen=True)
class OptionContract:
    right: str  # "C" or "P"
    strike: float  # dollars
    expiration: date


@dataclass(frozen=True)
class PositionInput:
    """One position as the engines see it. Money in portfolio currency; quantity in shares or
    contracts, negative for SHORT/SC/SP."""

    id: uuid.UUID
    symbol: str
    position_type: str
    quantity: float
    entry_price: float
    entry_date: date
    exit_date: date | None = None
    investment_class: str | None = None
    underlying_symbol: str | None = None
    strike_price: float | None = None
    expiration_date: date | None = None
    implied_volatility: float | None = None

    @property
    def asset_class(self) -> str:
        """PRIVATE, OPTIONS or PUBLIC. A NULL investment_class is not PRIVATE: it is an option
        if the position type says so, else PUBLIC."""
        if self.investment_class == PRIVATE:
            return PRIVATE
        if self.investment_class == OPTIONS or self.position_type in OPTION_TYPES:
            return OPTIONS
        return PUBLIC

    @property
    def multiplier(self) -> float:
        return OPTION_MULTIPLIER if self.asset_class == OPTIONS else 1.0

    @property
    def underlying(self) -> str | None:
        """The option's underlying: `underlying_symbol`, else the root of its OCC symbol, else
        None (then it cannot be priced from the market)."""
        if self.underlying_symbol:
            return self.underlying_symbol
        return option_root(self.symbol)

    @property
    def contract(self) -> OptionContract | None:
        """The option's terms: right from the position type (LC/SC calls, LP/SP puts), strike and
        expiration from their columns, each falling back to the OCC symbol. None for a
        non-option or when any term cannot be determined. The one place option terms are read."""
        if self.asset_class != OPTIONS:
            return None
        try:
            occ = parse_occ(self.symbol.strip().upper())
        except MalformedOccSymbol:
            occ = None
        if self.position_type in ("LC", "SC"):
            right = "C"
        elif self.position_type in ("LP", "SP"):
            right = "P"
        else:
            right = occ.right if occ else None
        strike = self.strike_price if self.strike_price is not None else (occ.strike if occ else None)
        expiration = self.expiration_date or (occ.expiration if occ else None)
        if right is None or expiration is None or strike is None \
                or not (math.isfinite(strike) and strike > 0):
            return None
        return OptionContract(right, float(strike), expiration)

    @property
    def market_symbol(self) -> str | None:
        """The symbol whose prices drive this position: the underlying for options, None for
        PRIVATE."""
        if self.asset_class == PRIVATE:
            return None
        if self.asset_class == OPTIONS:
            return self.underlying
        return self.symbol

    def is_held_on(self, day: date) -> bool:
        """Held at the close of `day`: entered on or before it, not exited on or before it."""
        return self.entry_date <= day and (self.exit_date is None or self.exit_date > day) \
            and self.quantity != 0

    def sign_error(self) -> str | None:
        """A message if the quantity's sign contradicts the position type, else None."""
        if self.position_type not in POSITION_TYPES:
            return f"unknown position_type {self.position_type!r}"
        if self.position_type in SHORT_TYPES and self.quantity > 0:
            return f"{self.position_type} with positive quantity {self.quantity}"
        if self.position_type not in SHORT_TYPES and self.quantity < 0:
            return f"{self.position_type} with negative quantity {self.quantity}"
        return None


def price_symbols(positions: Sequence[PositionInput]) -> set[str]:
    """Every symbol whose closes pricing these positions may read: each position's own symbol,
    and an option's underlying."""
    return {p.symbol for p in positions} | {
        p.underlying for p in positions if p.asset_class == OPTIONS and p.underlying}
