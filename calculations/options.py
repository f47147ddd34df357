"""Option contract helpers: OCC symbols (compact `SPY250919C00460000` and padded OSI
`SPY   250919C00460000`) and intrinsic value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

_OCC = re.compile(r"(?P<root>[A-Z][A-Z0-9.]{0,5})(?P<pad> *)(?P<yy>[0-9]{2})(?P<mm>[0-9]{2})"
                  r"(?P<dd>[0-9]{2})(?P<right>[CP])(?P<strike>[0-9]{8})")


class MalformedOccSymbol(ValueError):
    """An option symbol that is not a valid OCC/OSI symbol. Carries `.symbol`."""

    def __init__(self, symbol: str, reason: str) -> None:
        super().__init__(f"malformed OCC option symbol {symbol!r}: {reason}")
        self.symbol = symbol


@dataclass(frozen=True)
class OccSymbol:
    root: str
    expiration: date
    right: str  # "C" or "P"
    strike: float  # dollars

    def format(self, padded: bool = False) -> str:
        """Compact form, or the 21-character OSI form with the root padded to 6 characters."""
        root = self.root.ljust(6) if padded else self.root
        millis = round(self.strike * 1000)
        return f"{root}{self.expiration:%y%m%d}{self.right}{millis:08d}"


def parse_occ(symbol: str) -> OccSymbol:
    """Parse a compact or padded OCC symbol. Raises MalformedOccSymbol (never guesses)."""
    match = _OCC.fullmatch(symbol)
    if match is None:
        raise MalformedOccSymbol(symbol, "expected ROOT + YYMMDD + C/P + 8-digit strike")
    if match["pad"] and len(match["root"]) + len(match["pad"]) != 6:
        raise MalformedOccSymbol(symbol, "padded OSI roots are exactly 6 characters wide")
    try:
        expiration = date(2000 + int(match["yy"]), int(match["mm"]), int(match["dd"]))
    except ValueError:
        raise MalformedOccSymbol(symbol, "expiration is not a calendar date") from None
    strike = int(match["strike"]) / 1000.0
    if strike <= 0:
        raise MalformedOccSymbol(symbol, "strike must be positive")
    return OccSymbol(match["root"], expiration, match["right"], strike)


def is_occ_symbol(symbol: str) -> bool:
    try:
        parse_occ(symbol)
    except MalformedOccSymbol:
        return False
    return True


def intrinsic_value(right: str, underlying_price: float, strike: float) -> float:
    """Per-share intrinsic value in dollars: max(S − K, 0) for calls, max(K − S, 0) for puts."""
    if right == "C":
        return max(underlying_price - strike, 0.0)
    if right == "P":
        return max(strike - underlying_price, 0.0)
    raise ValueError(f"option right must be 'C' or 'P', got {right!r}")
