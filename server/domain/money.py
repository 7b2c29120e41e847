"""Money: a Decimal amount with an ISO 4217 currency. Never a float."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import cache, lru_cache

from babel.core import get_global
from babel.numbers import get_currency_precision, get_territory_currencies, list_currencies

from server.domain.errors import InvalidInput


@cache
def _known_currencies() -> frozenset[str]:
    """Every ISO 4217 code, past ones too: what stored amounts may carry."""
    return frozenset(list_currencies())


@lru_cache(maxsize=2)  # today's, and yesterday's for a moment around midnight
def tender_currencies(on: date) -> frozenset[str]:
    """The currencies some country's people can pay in on that day: ISO 4217 without the
    withdrawn ones (DEM, FRF), funds, metals and the test codes (XAU, XTS, XXX)."""
    return frozenset(
        code
        for territory in get_global("territory_currencies")
        for code in get_territory_currencies(territory, start_date=on, tender=True)
    )


def minor_units(currency: str) -> int:
    """Digits after the decimal point for a currency (JPY 0, USD 2, KWD 3), as the Unicode
    CLDR has them: the digits prices are written and paid with. ISO 4217's table differs for a
    few (HUF, COP, IDR 2, IQD 3) whose fractions no longer circulate (PayPal refuses a HUF
    amount with decimals)."""
    return int(get_currency_precision(currency))


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if self.currency not in _known_currencies():
            raise InvalidInput(f"unknown currency {self.currency!r}", code="invalid_currency")
        if not self.amount.is_finite():
            raise InvalidInput("amount must be a finite decimal", code="invalid_amount")
        exponent = self.amount.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > minor_units(self.currency):
            raise InvalidInput(
                f"{self.currency} allows {minor_units(self.currency)} decimal places",
                code="invalid_amount",
            )

    @classmethod
    def parse(cls, amount: str, currency: str) -> Money:
        """Build from wire values; the amount must be a decimal string, never a float, and the
        currency one that is legal tender today (a price nobody could pay is refused)."""
        currency = currency.upper()
        if currency not in tender_currencies(datetime.now(UTC).date()):
            raise InvalidInput(
                f"{currency!r} is not a currency in use (ISO 4217, legal tender): a product "
                "priced in one that was withdrawn needs a new price",
                code="invalid_currency",
            )
        try:
            value = Decimal(amount)
        except (InvalidOperation, TypeError, ValueError):
            raise InvalidInput(
                f"{amount!r} is not a decimal amount", code="invalid_amount"
            ) from None
        return cls(value, currency)

    def quantized(self) -> Decimal:
        exp = Decimal(1).scaleb(-minor_units(self.currency))
        return self.amount.quantize(exp, rounding=ROUND_HALF_EVEN)

    def to_wire(self) -> dict[str, str]:
        return {"amount": str(self.quantized()), "currency": self.currency}
