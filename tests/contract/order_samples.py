"""Offers and orders for the order store's tests, and the steps they take with them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from server.domain.figures import OfferFigures
from server.domain.money import Money
from server.domain.offers import FlashOffer
from server.domain.orders import Address, Order, OrderStatus, place_order
from server.ports import OrderStore

T0 = datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)
TTL = timedelta(minutes=15)


@dataclass
class Stores:
    """An order store under test (the `order_stores` fixture, conftest.py)."""

    orders: OrderStore
    raw: Any = None  # the Mongo database, for checks of the stored form


ADDRESS = Address(
    name="Mia Chen",
    line1="Friedrichstr. 12",
    line2="3rd floor",
    city="Berlin",
    postal_code="10117",
    country="DE",
    phone="+4930123456",
)


def sample_offer(offer_id: str = "of_1", room_id: str = "r_1", price: str = "12.50") -> FlashOffer:
    return FlashOffer(
        id=offer_id,
        room_id=room_id,
        product_id="p_1",
        host_id="host-1",
        price=Money(Decimal(price), "USD"),
        quantity=100,
        per_user_limit=5,
        starts_at=T0,
        ends_at=T0 + timedelta(minutes=5),
        created_at=T0,
    )


def sample_order(
    order_id: str = "o_1",
    key: str = "k_1",
    *,
    buyer: str = "u_1",
    offer: FlashOffer | None = None,
    quantity: int = 2,
    seconds: int = 0,
) -> Order:
    return place_order(
        order_id=order_id,
        idempotency_key=key,
        offer=offer or sample_offer(),
        buyer_id=buyer,
        product={
            "title": "Silk scarf",
            "hs_code": "611710",
            "price": {"amount": "12.50", "currency": "USD"},
        },
        quantity=quantity,
        address=ADDRESS,
        now=T0 + timedelta(seconds=seconds),
        reservation_id=f"res-{order_id}",
        stock_build=1_796_000_000_000_000,
        reservation_ttl=TTL,
    )


async def figures_of_offer(store: OrderStore, offer_id: str) -> OfferFigures:
    [figures] = await store.figures_of_offers([offer_id])
    return figures


async def move_order(store: OrderStore, order_id: str, to: OrderStatus, minutes: int = 1) -> Order:
    order = await store.get(order_id)
    before = order.status
    order.move(to, at=T0 + TTL + timedelta(minutes=minutes), by="system", reason="test")
    await store.save_move(order, expected=before)
    return order
