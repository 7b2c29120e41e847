"""Steps of the tests in which Redis loses an offer twice, with orders landing late between."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest

from server.domain.errors import Unavailable
from server.domain.offers import FlashOffer
from server.domain.orders import Order, OrderStatus
from server.ports import OrderStore
from tests.unit.services.shop import ADDRESS, HeldWrites, Shop, buyer, other_process


async def answered_try_again(
    shop: Shop, offer: FlashOffer, *, n: int = 1, clock_ahead: timedelta = timedelta(0)
) -> HeldWrites:
    """Buyer `n` (key k`n`) hears "try again": its order write is on its way, and lands when
    told. Its process's clock runs `clock_ahead` of the others'."""
    writes = HeldWrites(shop.orders_store)
    _, late_process = other_process(
        shop, orders=cast(OrderStore, writes), clock=lambda: shop.clock() + clock_ahead
    )
    with pytest.raises(Unavailable):
        await late_process.claim(
            offer.id, buyer(n), quantity=1, idempotency_key=f"k{n}", address=ADDRESS
        )
    shop.clock.advance(seconds=1)
    return writes


def notes_fail_once(shop: Shop) -> None:
    """MongoDB away for the next note of the orders a rebuilt stock holds, a moment."""
    store: Any = shop.orders_store
    noting = store.checked_after_rebuild
    failures = [Unavailable("the database is unreachable, try again")]

    async def away_once(order_ids: list[str], build: int) -> None:
        if failures:
            raise failures.pop()
        await noting(order_ids, build)

    store.checked_after_rebuild = away_once


async def settled_after_losing_it_again(shop: Shop, writes: HeldWrites, *answered: Order) -> None:
    """Redis loses the offer again before any round checked its orders; then rounds settle
    them: the answered orders stand, and buyer 1's late one is cancelled."""
    shop.stock.flush()
    _, survivor = other_process(shop)
    for _ in range(2):  # rebuilds the offer (its check finds it lost), then checks
        await survivor.settle_late_orders()
    for order in answered:
        assert (await shop.orders_store.get(order.id)).status is OrderStatus.PENDING_PAYMENT
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
