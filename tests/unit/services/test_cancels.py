"""Cancelling an order: the units go back once, a cancel sent again answers the cancelled order,
and one that loses a race (to itself, to the expiry) says so with the documented code."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from server.domain.errors import Conflict, Forbidden
from server.domain.identity import SYSTEM
from server.domain.offers import most_claims
from server.domain.orders import Order, OrderStatus
from server.ports import OrderStore
from server.stock_port import StockReservations
from tests.unit.services.flaky import FlakyStock
from tests.unit.services.shop import ADDRESS, HOST, HeldCalls, Shop, buyer, other_process


async def test_cancel_gives_the_units_back_and_the_buyer_may_claim_again(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    cancelled = await shop.orders.cancel(order.id, buyer(1))
    assert cancelled.status is OrderStatus.CANCELLED
    assert [step.to_status for step in cancelled.history] == [
        OrderStatus.PENDING_PAYMENT,
        OrderStatus.CANCELLED,
    ]
    assert await shop.stock.remaining(offer.id) == 3
    again, created = await shop.claim(offer, buyer(1), "k2")
    assert created
    assert again.id != order.id
    with pytest.raises(Forbidden):
        await shop.orders.cancel(again.id, HOST)  # the host sees it, but only the buyer cancels


async def test_a_buyer_cancelling_claim_after_claim_is_stopped_with_limit_reached(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    for turn in range(most_claims(1)):
        order, created = await shop.claim(offer, buyer(1), f"k{turn}")
        assert created
        shop.clock.advance(seconds=1)
        await shop.orders.cancel(order.id, buyer(1))
    orders_before = await shop.orders_store.list_for_buyer(buyer(1).user_id, 100)
    with pytest.raises(Conflict) as refused:
        await shop.claim(offer, buyer(1), "one-more")
    assert refused.value.code == "limit_reached"
    assert refused.value.message == (
        f"you have made {most_claims(1)} claims on this offer, the most one buyer may"
    )
    assert await shop.orders_store.list_for_buyer(buyer(1).user_id, 100) == orders_before
    assert await shop.stock.remaining(offer.id) == 3
    order, created = await shop.claim(offer, buyer(2), "k0")  # others still buy
    assert created


async def test_a_cancel_sent_again_or_twice_at_once_answers_the_cancelled_order(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=2)
    first, _ = await shop.claim(offer, buyer(1), "k1")
    await shop.orders.cancel(first.id, buyer(1))
    again = await shop.orders.cancel(first.id, buyer(1))  # its first answer was lost
    assert again.status is OrderStatus.CANCELLED
    assert len(again.history) == 2  # cancelled once
    second, _ = await shop.claim(offer, buyer(1), "k2")
    # Each cancel reads the order pending before any writes it: two of them lose the write.
    _, racing = other_process(shop, orders=cast(OrderStore, Unhurried(shop.orders_store)))
    together = await asyncio.gather(*(racing.cancel(second.id, buyer(1)) for _ in range(3)))
    assert {order.status for order in together} == {OrderStatus.CANCELLED}
    assert len((await shop.orders.get(second.id, buyer(1))).history) == 2
    assert await shop.stock.remaining(offer.id) == 3  # each order's unit back once


class Unhurried:
    """The shop's order store, letting other tasks run before each read and write."""

    def __init__(self, shared: OrderStore) -> None:
        self._shared = shared

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def get(self, order_id: str) -> Order:
        await asyncio.sleep(0)
        return await self._shared.get(order_id)

    async def save_move(self, order: Order, **when: Any) -> None:
        await asyncio.sleep(0)
        await self._shared.save_move(order, **when)


async def test_an_expired_order_cannot_be_cancelled(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    shop.clock.advance(minutes=16)
    assert await shop.orders.expire_due() == 1
    with pytest.raises(Conflict) as refused:
        await shop.orders.cancel(order.id, buyer(1))
    assert refused.value.code == "invalid_transition"


async def test_a_cancel_that_loses_the_race_to_the_expiry_is_an_invalid_transition(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    shop.clock.advance(minutes=16)
    store = HeldCalls(shop.orders_store, "save_move")
    _, racing = other_process(shop, orders=cast(OrderStore, store))
    # The cancel reads the order pending; the expiry moves it before the cancel writes.
    cancel = asyncio.ensure_future(racing.cancel(order.id, buyer(1)))
    await store.entered.wait()
    assert await shop.orders.expire_due() == 1
    store.gate.set()
    with pytest.raises(Conflict) as refused:
        await cancel
    assert refused.value.code == "invalid_transition"  # the documented code, not the store's
    assert (await shop.orders.get(order.id, buyer(1))).status is OrderStatus.EXPIRED


async def test_a_cancel_whose_units_cannot_go_back_leaves_the_buyers_notice_to_housekeeping(
    shop: Shop,
) -> None:
    """Against a Redis that hangs (the stock and the broker both), the give-back waits out its
    deadline; telling the buyer after it would wait out a second one, 10 s where 5 s is the
    promise. The move noted both: housekeeping gives the units back and tells the buyer."""
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    told = len(shop.events.private)

    async def hanging_broker(user_id: str, event: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    stock = FlakyStock(shop.stock)
    stock.releases_failing = 1
    _, orders = other_process(shop, stock=cast(StockReservations, stock), notify=hanging_broker)
    cancelled = await asyncio.wait_for(orders.cancel(order.id, buyer(1)), 2)
    assert cancelled.status is OrderStatus.CANCELLED
    assert await shop.stock.remaining(offer.id) == 2
    shop.clock.advance(seconds=6)  # TELL_AFTER
    assert await shop.orders.return_units_due() == 1
    assert await shop.orders.tell_untold_buyers() == 1
    assert await shop.stock.remaining(offer.id) == 3
    heard = [(user, e["order"]["status"]) for user, e in shop.events.private[told:]]
    assert heard == [("buyer-1", "cancelled")]


async def test_a_buyer_cannot_cancel_an_order_the_system_cancelled(shop: Shop) -> None:
    """A cancel sent again answers the order its buyer cancelled; one the system cancelled (a
    reservation lost) is refused as not cancellable, as an expired one is."""
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    lost = await shop.orders_store.get(order.id)  # another process's "reservation lost"
    lost.move(OrderStatus.CANCELLED, at=shop.clock(), by=SYSTEM, reason="reservation lost")
    await shop.orders_store.save_move(lost, expected=OrderStatus.PENDING_PAYMENT)
    with pytest.raises(Conflict) as refused:
        await shop.orders.cancel(order.id, buyer(1))
    assert refused.value.code == "invalid_transition"


async def test_an_expired_order_is_told_to_its_buyer_as_it_expires(shop: Shop) -> None:
    """Not a housekeeping step later, by the fallback for a broker that was away."""
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    told = len(shop.events.private)
    shop.clock.advance(minutes=16)
    assert await shop.orders.expire_due() == 1
    heard = [(user, e["order"]["id"], e["order"]["status"]) for user, e in shop.events.private]
    assert heard[told:] == [("buyer-1", order.id, "expired")]


@pytest.mark.parametrize("how", ["cancelled", "expired"])
async def test_a_buyer_who_claims_again_the_moment_they_hear_of_it_is_not_refused(
    shop: Shop, how: str
) -> None:
    """Told that their order was cancelled or expired, a buyer whose app claims again at once
    gets a new order: the units were back before they were told, not refused `limit_reached`
    at a per-user limit that the order's units still filled."""
    offer = await shop.launch(quantity=3, limit=1, duration=3600)
    again: list[Order] = []

    async def claim_again_on_hearing(user_id: str, event: dict[str, Any]) -> None:
        if event["order"]["status"] == how:
            order, _ = await orders.claim(
                offer.id, buyer(1), quantity=1, idempotency_key="k2", address=ADDRESS
            )
            again.append(order)

    _, orders = other_process(shop, notify=claim_again_on_hearing)
    order, _ = await orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS
    )
    if how == "cancelled":
        await orders.cancel(order.id, buyer(1))
    else:
        shop.clock.advance(minutes=16)
        assert await orders.expire_due() == 1
    assert [o.status for o in again] == [OrderStatus.PENDING_PAYMENT]
    assert await shop.stock.remaining(offer.id) == 2
