"""`order.updated` that was never sent (the broker was away, or the process died after storing
the change): noted on the order, and told by housekeeping."""

from __future__ import annotations

from typing import Any

import pytest

from server.domain.errors import Unavailable
from server.domain.orders import OrderStatus
from server.services import buyer_notices
from server.services.buyer_notices import TELL_AFTER
from tests.unit.services.shop import ADDRESS, Shop, buyer, other_process


def told_statuses(shop: Shop, since: int) -> list[tuple[str, str]]:
    return [(user, e["order"]["status"]) for user, e in shop.events.private[since:]]


async def test_a_change_the_buyer_could_not_hear_of_is_told_once_the_broker_is_back(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    broker_away = True

    async def notify(user_id: str, event: dict[str, Any]) -> None:
        if broker_away:
            raise Unavailable("live events are unavailable, try again")
        await shop.events.send_private(user_id, event)

    _, orders = other_process(shop, notify=notify)
    told_before = len(shop.events.private)
    await orders.cancel(order.id, buyer(1))  # the cancel stands; its order.updated cannot go
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    assert await orders.tell_untold_buyers() == 0  # still away
    broker_away = False
    assert await orders.tell_untold_buyers() == 1
    assert await orders.tell_untold_buyers() == 0  # told once
    assert told_statuses(shop, told_before) == [("buyer-1", "cancelled")]


async def test_a_change_whose_process_died_before_telling_is_told_by_another(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    told_before = len(shop.events.private)
    # A process stores the payment, then dies before its order.updated.
    order.move(OrderStatus.PAID, at=shop.clock(), by="payments", reason="paid")
    await shop.orders_store.save_move(order, expected=OrderStatus.PENDING_PAYMENT)
    _, survivor = other_process(shop)
    assert await survivor.tell_untold_buyers() == 0  # left to the process that made it, a while
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    assert await survivor.tell_untold_buyers() == 1
    assert await survivor.tell_untold_buyers() == 0
    assert told_statuses(shop, told_before) == [("buyer-1", "paid")]


async def test_a_change_told_at_once_is_not_told_again(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    told_before = len(shop.events.private)
    await shop.orders.cancel(order.id, buyer(1))
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    assert await shop.orders.tell_untold_buyers() == 0
    assert told_statuses(shop, told_before) == [("buyer-1", "cancelled")]


async def test_a_claim_whose_order_update_hits_a_bug_still_gets_its_order(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)

    async def notify(user_id: str, event: dict[str, Any]) -> None:
        raise TypeError("a bug in the broker")

    _, orders = other_process(shop, notify=notify)
    order, created = await orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS
    )
    assert created  # the order stands: its buyer is told later, not refused
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    told_before = len(shop.events.private)
    assert await shop.orders.tell_untold_buyers() == 1
    assert [(u, e["order"]["id"]) for u, e in shop.events.private[told_before:]] == [
        ("buyer-1", order.id)
    ]


async def test_an_order_that_cannot_be_told_does_not_hold_back_the_other_buyers(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)

    async def broker_away(user_id: str, event: dict[str, Any]) -> None:
        raise Unavailable("live events are unavailable, try again")

    poisoned: list[str] = []

    async def buggy_for_one(user_id: str, event: dict[str, Any]) -> None:
        if not poisoned:
            poisoned.append(user_id)  # the first order a round reads: one with a bug
        if user_id == poisoned[0]:
            raise TypeError("a bug")
        await shop.events.send_private(user_id, event)

    _, claiming = other_process(shop, notify=broker_away)
    for n in (1, 2):
        await claiming.claim(
            offer.id, buyer(n), quantity=1, idempotency_key=f"k{n}", address=ADDRESS
        )
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    _, housekeeping = other_process(shop, notify=buggy_for_one)
    told_before = len(shop.events.private)
    assert await housekeeping.tell_untold_buyers() == 1
    assert await housekeeping.tell_untold_buyers() == 0  # the other is not told twice
    other = "buyer-2" if poisoned == ["buyer-1"] else "buyer-1"
    assert [user for user, _ in shop.events.private[told_before:]] == [other]


async def test_a_batch_of_orders_that_cannot_be_told_holds_back_no_other_buyer(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buyer_notices, "TELL_BATCH", 2)  # as many failing as a round reads
    offer = await shop.launch(quantity=5, limit=1)

    async def broker_away(user_id: str, event: dict[str, Any]) -> None:
        raise Unavailable("live events are unavailable, try again")

    poisoned: list[str] = []
    fixed = False

    async def buggy_for_two(user_id: str, event: dict[str, Any]) -> None:
        if len(poisoned) < 2 and user_id not in poisoned:
            poisoned.append(user_id)  # the first two orders a round reads: ones with a bug
        if user_id in poisoned and not fixed:
            raise TypeError("a bug")
        await shop.events.send_private(user_id, event)

    _, claiming = other_process(shop, notify=broker_away)
    for n in (1, 2, 3):
        await claiming.claim(
            offer.id, buyer(n), quantity=1, idempotency_key=f"k{n}", address=ADDRESS
        )
    shop.clock.advance(seconds=TELL_AFTER.total_seconds() + 1)
    _, housekeeping = other_process(shop, notify=buggy_for_two)
    told_before = len(shop.events.private)
    for _ in range(3):
        await housekeeping.tell_untold_buyers()
    (other,) = {"buyer-1", "buyer-2", "buyer-3"} - set(poisoned)
    assert [user for user, _ in shop.events.private[told_before:]] == [other]
    fixed = True  # the bug is gone...
    await housekeeping.tell_untold_buyers()
    assert len(shop.events.private) - told_before == 1  # ...but they wait out their minute
    shop.clock.advance(seconds=buyer_notices.FAILED_TELL_BACKOFF.total_seconds() + 1)
    assert await housekeeping.tell_untold_buyers() == 2
