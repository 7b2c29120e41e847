"""What the API answers, as the OpenAPI document declares it.

The answers are built as plain dicts on the hot paths (`*_to_wire`); these types describe them
for the document only, and a test holds every answer of a real server to them, so the two
cannot drift apart. Closed: a key the document does not name fails that test too.
"""

from __future__ import annotations

from typing import Annotated, NotRequired  # pydantic reads these on Python 3.11

from pydantic import ConfigDict, WithJsonSchema, with_config
from typing_extensions import TypedDict

from server.domain.offers import EndReason
from server.domain.orders import OrderStatus
from server.domain.rooms import RoomStatus

_CLOSED = ConfigDict(extra="forbid")
# RFC 3339 in UTC with a `Z`, to the millisecond.
Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


@with_config(_CLOSED)
class Money(TypedDict):
    amount: str  # a decimal string, as many places as the currency has
    currency: str  # ISO 4217


@with_config(_CLOSED)
class ProductSummary(TypedDict):
    """A product as every viewer of a room sees it (pinned, or in `offer.started`)."""

    id: str
    title: str
    images: list[str]
    price: Money
    stock: int
    origin_country: NotRequired[str]
    other_prices: NotRequired[list[Money]]


@with_config(_CLOSED)
class SoldProduct(TypedDict):
    """A product as an order keeps it: what was sold, not the seller's stock."""

    id: str
    title: str
    images: list[str]
    price: Money
    owner_id: str
    created_at: Time
    description: str
    sku: str | None
    origin_country: str | None
    hs_code: str | None
    weight_grams: int | None
    other_prices: list[Money]


@with_config(_CLOSED)
class Product(SoldProduct):
    stock: int


@with_config(_CLOSED)
class Room(TypedDict):
    id: str
    host_id: str
    title: str
    status: RoomStatus
    created_at: Time
    scheduled_at: Time | None
    started_at: Time | None
    ended_at: Time | None
    pinned_product: ProductSummary | None
    slow_mode_seconds: int
    blocked_words: NotRequired[list[str]]  # for the room's host and admins only


@with_config(_CLOSED)
class Offer(TypedDict):
    id: str
    room_id: str
    product_id: str
    price: Money
    quantity: int
    per_user_limit: int
    remaining: int | None  # null while the stock is being restored
    stock_version: int | None
    starts_at: Time
    ends_at: Time
    ended_at: Time | None
    end_reason: EndReason | None


@with_config(_CLOSED)
class OfferList(TypedDict):
    items: list[Offer]  # newest first


@with_config(_CLOSED)
class Address(TypedDict):
    name: str
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str | None
    phone: str | None


# "from" is a keyword: the functional form.
Transition = TypedDict(
    "Transition",
    {"from": OrderStatus | None, "to": OrderStatus, "at": Time, "by": str, "reason": str},
)
Transition.__pydantic_config__ = _CLOSED  # type: ignore[attr-defined]  # as with_config would


@with_config(_CLOSED)
class Order(TypedDict):
    id: str
    status: OrderStatus
    offer_id: str
    room_id: str
    buyer_id: str
    idempotency_key: str
    product: SoldProduct  # as it was when the order was placed
    unit_price: Money
    quantity: int
    total: Money
    shipping_address: Address
    created_at: Time
    reservation_expires_at: Time
    history: list[Transition]


@with_config(_CLOSED)
class OrderPage(TypedDict):
    items: list[Order]  # up to `limit`, newest first
    next_cursor: str | None  # send it as `cursor` for the next page; null on the last


@with_config(_CLOSED)
class RoomPage(TypedDict):
    items: list[Room]
    next_cursor: str | None


@with_config(_CLOSED)
class OfferFigures(TypedDict):
    offer_id: str
    orders: int  # standing: not cancelled or expired
    orders_placed: int
    units: int
    paid_orders: int
    paid_units: int
    gmv: list[Money]  # paid orders, per currency


@with_config(_CLOSED)
class RoomStats(TypedDict):
    room_id: str
    status: RoomStatus
    viewers: int | None  # null while Redis, which counts them, is away
    peak_viewers: int
    likes: int
    live_counters: bool  # false: Redis is away, and peak viewers and likes are as last kept
    orders: int
    orders_placed: int
    paid_orders: int
    conversion: str | None  # paid orders over orders placed, a decimal string
    gmv: list[Money]
    offers: list[OfferFigures]


# What the operations answer, named in the document by their class names.
ANSWERS: tuple[type, ...] = (
    Product,
    Room,
    RoomPage,
    Offer,
    OfferList,
    Order,
    OrderPage,
    RoomStats,
)
