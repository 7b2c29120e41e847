"""An offer's figures for its host, counted from its orders when asked.

The orders are the only record: the figures are not kept anywhere else, so they can never
disagree with the orders, and writing an order never has to change a second document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from server.domain.orders import HOLDS_STOCK, OrderStatus

# An order counts as claimed until it is cancelled or expires (a refunded order was claimed
# and paid, then paid back); it counts as paid from payment until a refund.
_NOT_CLAIMED = frozenset({OrderStatus.CANCELLED, OrderStatus.EXPIRED})
_PAID = frozenset(
    {OrderStatus.PAID, OrderStatus.FULFILLING, OrderStatus.SHIPPED, OrderStatus.DELIVERED}
)


@dataclass(frozen=True, slots=True)
class OfferFigures:
    offer_id: str
    orders: int = 0
    units: int = 0
    paid_orders: int = 0
    paid_units: int = 0
    gmv: Mapping[str, Decimal] = field(default_factory=dict)  # currency -> paid amount
    # Every order placed, whatever became of it: claim-to-paid conversion is paid over these.
    # Over `orders` alone it would climb towards 100 % as unpaid orders expire.
    placed: int = 0
    # Units its orders still hold: claimed, less what refunds gave back to the product.
    held_units: int = 0


@dataclass(frozen=True, slots=True)
class RoomFigures:
    offers: list[OfferFigures]  # each of the room's latest offers, oldest first
    # Every offer of the room that has orders, however many it ran: the room's totals.
    every_offer: list[OfferFigures]


@dataclass(frozen=True, slots=True)
class OrderGroup:
    """Orders of one offer in the same status and currency, counted together (a store may
    group them itself, as MongoDB's aggregation does, or hand over each order alone)."""

    status: OrderStatus
    currency: str
    orders: int
    units: int
    amount: Decimal  # the sum of their totals


def figures_of(offer_id: str, groups: Iterable[OrderGroup]) -> OfferFigures:
    orders = units = paid_orders = paid_units = placed = held_units = 0
    gmv: dict[str, Decimal] = {}
    for group in groups:
        placed += group.orders
        if group.status in HOLDS_STOCK:
            held_units += group.units
        if group.status in _NOT_CLAIMED:
            continue
        orders += group.orders
        units += group.units
        if group.status in _PAID:
            paid_orders += group.orders
            paid_units += group.units
            gmv[group.currency] = gmv.get(group.currency, Decimal(0)) + group.amount
    return OfferFigures(offer_id, orders, units, paid_orders, paid_units, gmv, placed, held_units)
