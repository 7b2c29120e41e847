"""An order write that misses its deadline and lands after the reaper has given its units back:
settled as its claim would have been, rather than overselling the offer."""

from __future__ import annotations

from typing import Any, cast

import pytest

from server.adapters.memory_orders import MemoryOrderStore
from server.domain.errors import Conflict, Unavailable
from server.domain.orders import HOLDS_STOCK, Order, OrderStatus
from server.ports import OrderStore
from server.services.orders import ORPHAN_AFTER
from tests.unit.services.shop import ADDRESS, Shop, buyer, other_process


class HeldWrites:
    """The shop's orders, through a connection whose writes miss their deadline (the claimer
    hears "try again") and reach the database later, when the test says."""

    def __init__(self, shared: MemoryOrderStore) -> None:
        self._shared = shared
        self.held: list[Order] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def create(self, order: Order) -> Order:
        self.held.append(order)
        raise Unavailable("the order could not be written in time, try again")

    async def land(self) -> None:
        for order in self.held:
            await self._shared.create(order)


async def claim_held(shop: Shop, quantity: int) -> tuple[HeldWrites, str]:
    """An offer of `quantity`, one per buyer, whose first claim's write is held; the reaper
    then gives its unit back. The offer's id."""
    offer = await shop.launch(quantity=quantity, limit=1)
    writes = HeldWrites(shop.orders_store)
    _, late_process = other_process(shop, orders=cast(OrderStore, writes))
    with pytest.raises(Unavailable):
        await late_process.claim(
            offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS
        )
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await shop.orders.reap_orphans(offer.id) == 1  # no order under the key: released
    return writes, offer.id


async def units_held(shop: Shop, offer_id: str) -> int:
    orders = await shop.orders_store.of_offer(offer_id)
    return sum(o.quantity for o in orders if o.status in HOLDS_STOCK)


async def test_an_order_landing_after_its_units_were_sold_again_is_cancelled(shop: Shop) -> None:
    writes, offer_id = await claim_held(shop, quantity=2)
    offer = await shop.offers_store.get(offer_id)
    for n in (2, 3):  # the released unit sells again: the offer is sold out
        await shop.claim(offer, buyer(n), "k1")
    await writes.land()
    assert await units_held(shop, offer_id) == 3  # 3 of 2, until housekeeping finds it
    told_before = len(shop.events.private)
    assert await shop.orders.settle_late_orders() == 1
    assert await units_held(shop, offer_id) == 2
    assert await shop.stock.remaining(offer_id) == 0
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    told = shop.events.private[told_before:]
    assert [(user, e["order"]["status"]) for user, e in told] == [("buyer-1", "cancelled")]
    assert await shop.orders.settle_late_orders() == 0  # settled once
    with pytest.raises(Conflict) as retry:  # the claim sent again: its units went back
        await shop.claim(offer, buyer(1), "k1")
    assert retry.value.code == "claim_expired"


async def test_an_order_landing_while_its_units_are_free_is_counted_by_the_rebuild(
    shop: Shop,
) -> None:
    writes, offer_id = await claim_held(shop, quantity=3)
    shop.stock.flush()  # Redis lost the offer before the late order landed
    await writes.land()
    told_before = len(shop.events.private)
    assert await shop.orders.settle_late_orders() == 0  # kept: the rebuild counts it
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.PENDING_PAYMENT
    assert await shop.stock.remaining(offer_id) == 2
    told = shop.events.private[told_before:]
    assert [(user, e["order"]["id"]) for user, e in told] == [("buyer-1", late.id)]
