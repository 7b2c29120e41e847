"""An expiry that loses its race: it read the order due, then a cancel or a payment moved it
before the expiry could. The expiry then leaves the order alone: its units go back once (by
the cancel) or not at all (paid), and the buyer hears only what the order truly became. (The
other race, a cancel losing to the expiry, is in test_cancels.py.)"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from server.domain.errors import Conflict
from server.domain.offers import FlashOffer
from server.domain.orders import Order, OrderStatus
from server.ports import OrderStore
from server.services.buyer_notices import TELL_AFTER
from tests.unit.services.shop import HeldCalls, Shop, buyer, other_process, pay

_S = OrderStatus


async def order_due_while_an_expiry_read_it(
    shop: Shop,
) -> tuple[FlashOffer, Order, asyncio.Task[int], HeldCalls]:
    """Buyer 1's order of an offer of 3 (running an hour), past its reservation; another
    process's expiry has read it due and waits (`gate` lets it go on)."""
    offer = await shop.launch(quantity=3, limit=1, duration=3600)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    shop.clock.advance(minutes=16)
    reading = HeldCalls(shop.orders_store, "due_to_expire", answer_late=True)
    _, expirer = other_process(shop, orders=cast(OrderStore, reading))
    expiry = asyncio.create_task(expirer.expire_due())
    await reading.entered.wait()
    return offer, order, expiry, reading


def told(shop: Shop, since: int) -> list[tuple[str, str]]:
    return [(user, e["order"]["status"]) for user, e in shop.events.private[since:]]


def moves(order: Order) -> list[tuple[OrderStatus | None, OrderStatus, str]]:
    return [(step.from_status, step.to_status, step.by) for step in order.history]


async def test_an_expiry_that_loses_its_race_to_a_cancel_gives_nothing_back_nor_tells(
    shop: Shop,
) -> None:
    offer, order, expiry, reading = await order_due_while_an_expiry_read_it(shop)
    told_before = len(shop.events.private)
    await shop.orders.cancel(order.id, buyer(1))
    assert await shop.stock.remaining(offer.id) == 3  # the cancel gave the unit back

    reading.gate.set()
    assert await expiry == 0  # it expired nothing

    assert await shop.stock.remaining(offer.id) == 3  # given back once, by the cancel
    assert told(shop, told_before) == [("buyer-1", "cancelled")]  # never "expired"
    stored = await shop.orders_store.get(order.id)
    assert stored.status is _S.CANCELLED
    assert moves(stored) == [
        (None, _S.PENDING_PAYMENT, "buyer-1"),
        (_S.PENDING_PAYMENT, _S.CANCELLED, "buyer-1"),
    ]
    assert await shop.orders.return_units_due() == 0  # nothing left noted to go back
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    assert await shop.orders.tell_untold_buyers() == 0  # nor to tell
    assert told(shop, told_before) == [("buyer-1", "cancelled")]


async def test_an_expiry_that_loses_its_race_to_a_payment_leaves_the_paid_units_held(
    shop: Shop,
) -> None:
    offer, order, expiry, reading = await order_due_while_an_expiry_read_it(shop)
    told_before = len(shop.events.private)
    await pay(shop, order.id)  # the payment lands as the expiry goes on

    reading.gate.set()
    assert await expiry == 0

    assert await shop.stock.remaining(offer.id) == 2  # the paid unit is not sold again
    with pytest.raises(Conflict) as refused:  # and still counts against the buyer's limit
        await shop.claim(offer, buyer(1), "k2")
    assert refused.value.code == "limit_reached"
    stored = await shop.orders_store.get(order.id)
    assert stored.status is _S.PAID
    assert moves(stored) == [
        (None, _S.PENDING_PAYMENT, "buyer-1"),
        (_S.PENDING_PAYMENT, _S.PAID, "payments"),
    ]
    assert told(shop, told_before) == []  # not "expired"
    assert await shop.orders.return_units_due() == 0
    # The payment's own notice, left untold by the store's write, is told as "paid".
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    assert await shop.orders.tell_untold_buyers() == 1
    assert told(shop, told_before) == [("buyer-1", "paid")]
