"""Products as the catalog holds them, with the trade fields cross-border selling needs.

The trade fields are optional so a product can be listed before its customs data is known;
quoting a landed cost or declaring to customs is what requires them. Input is validated at the
edge (schemas/http.py), where each bad field gets its own error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from server.domain.money import Money

MAX_DESCRIPTION_CHARS = 5000
MAX_SKU_CHARS = 64
MAX_OTHER_PRICES = 20
# Above a tonne is freight, not a parcel from a live show.
MAX_WEIGHT_GRAMS = 1_000_000


@dataclass(frozen=True, slots=True)
class ProductTrade:
    """What cross-border trade needs to know of a product beyond its title and price."""

    description: str = ""
    sku: str | None = None
    origin_country: str | None = None
    hs_code: str | None = None
    weight_grams: int | None = None
    other_prices: tuple[Money, ...] = ()


@dataclass(slots=True)
class Product:
    id: str
    owner_id: str
    title: str
    price: Money
    stock: int
    created_at: datetime
    images: list[str] = field(default_factory=list)
    description: str = ""
    sku: str | None = None
    origin_country: str | None = None  # ISO 3166-1 alpha-2, where the goods were made
    hs_code: str | None = None  # Harmonized System code, 6 to 10 digits, no dots
    weight_grams: int | None = None  # shipping weight of one unit
    # The same product priced in more currencies (each once, never the main price's), so
    # shoppers abroad see a price set by the seller rather than a converted one.
    other_prices: list[Money] = field(default_factory=list)
    # How many offers have been launched against the stock figure: a stock count stores its
    # figure only if this is unchanged since it read the offers' bookings (ProductStore).
    launches: int = 0
