"""An order write that misses its deadline and lands after the reaper has given its units back:
settled as its claim would have been, rather than overselling the offer."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from server.domain.errors import Conflict, Unavailable
from server.domain.offers import ORPHAN_AFTER
from server.domain.orders import OrderStatus
from server.ports import OrderStore
from server.services.late_orders import LATE_WRITES
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    HeldCalls,
    HeldWrites,
    Shop,
    assert_cancelled_and_told,
    buyer,
    other_process,
    units_held,
)


async def claim_late(shop: Shop, quantity: int) -> tuple[HeldWrites, str]:
    """An offer of `quantity`, one per buyer, whose first claim's write is held, until the
    reaper may take its unit for an orphan's. The offer's id."""
    offer = await shop.launch(quantity=quantity, limit=1)
    writes = HeldWrites(shop.orders_store)
    _, late_process = other_process(shop, orders=cast(OrderStore, writes))
    with pytest.raises(Unavailable):
        await late_process.claim(
            offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS
        )
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    return writes, offer.id


async def claim_held(shop: Shop, quantity: int) -> tuple[HeldWrites, str]:
    """As `claim_late`, and the reaper has given the unit back."""
    writes, offer_id = await claim_late(shop, quantity)
    assert await shop.orders.reap_orphans(offer_id) == 1  # no order under the key: released
    return writes, offer_id


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
    await assert_cancelled_and_told(shop, writes, told_before)
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


async def test_a_late_order_a_rebuild_finds_beside_its_buyers_new_claim_is_cancelled(
    shop: Shop,
) -> None:
    # The buyer heard "try again", then `claim_expired` once the reaper gave k1's unit back,
    # and claimed again with a new key. Then Redis lost the offer, and k1's write landed.
    writes, offer_id = await claim_held(shop, quantity=3)  # one per buyer
    offer = await shop.offers_store.get(offer_id)
    await shop.claim(offer, buyer(1), "k2")
    shop.stock.flush()
    await writes.land()
    told_before = len(shop.events.private)
    assert await shop.orders.settle_late_orders() == 1  # the rebuild leaves it out: cancelled
    assert await units_held(shop, offer_id) == 1
    snapshot = await shop.stock.snapshot(offer_id)
    assert snapshot is not None
    assert snapshot.held_by_buyer == {"buyer-1": 1}
    assert await shop.stock.remaining(offer_id) == 2
    await assert_cancelled_and_told(shop, writes, told_before)


@pytest.mark.parametrize("redis_lost", [False, True])
async def test_a_late_order_of_an_ended_offer_is_cancelled_with_or_without_a_redis_loss(
    shop: Shop, redis_lost: bool
) -> None:
    # The end took what was sold then (1 unit); k1's unit, given back before, went to the
    # product. A rebuild must not count the late order within the offer's whole quantity.
    writes, offer_id = await claim_held(shop, quantity=3)
    offer = await shop.offers_store.get(offer_id)
    await shop.claim(offer, buyer(2), "k2")
    await shop.offers.stop(offer_id, HOST)
    assert (await shop.offers_store.get(offer_id)).taken_at_end == 1
    if redis_lost:
        shop.stock.flush()
    await writes.land()
    await shop.orders.settle_late_orders()
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    assert await units_held(shop, offer_id) == 1


async def test_an_order_landing_after_its_reaper_died_is_settled_by_another_process(
    shop: Shop,
) -> None:
    writes, offer_id = await claim_held(shop, quantity=1)  # the shop's process released k1
    offer = await shop.offers_store.get(offer_id)
    await shop.claim(offer, buyer(2), "k2")  # the released unit sold again
    await writes.land()
    _, survivor = other_process(shop)  # the shop's process is gone, and what it held
    assert await survivor.settle_late_orders() == 1
    assert await units_held(shop, offer_id) == 1
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED


async def test_a_reaper_finding_an_order_another_released_cancels_it_untold_of_creation(
    shop: Shop,
) -> None:
    writes, offer_id = await claim_late(shop, quantity=2)
    looking = HeldCalls(shop.orders_store, "by_key")  # its look for an order, on its way
    _, slow_reaper = other_process(shop, orders=cast(OrderStore, looking))
    reaping = asyncio.create_task(slow_reaper.reap_orphans(offer_id))
    await asyncio.wait_for(looking.entered.wait(), 1)
    assert await shop.orders.reap_orphans(offer_id) == 1  # no order yet: watched, released
    told_before = len(shop.events.private)
    await writes.land()
    looking.gate.set()  # the slow reaper finds the order, its units given back meanwhile
    assert await reaping == 0
    await assert_cancelled_and_told(shop, writes, told_before)  # never told "pending payment"
    assert await units_held(shop, offer_id) == 0
    assert await shop.stock.remaining(offer_id) == 2


async def test_a_key_is_watched_before_its_units_go_back(shop: Shop) -> None:
    _, offer_id = await claim_late(shop, quantity=2)
    watching = HeldCalls(shop.orders_store, "watch_key")
    _, reaper = other_process(shop, orders=cast(OrderStore, watching))
    reaping = asyncio.create_task(reaper.reap_orphans(offer_id))
    await asyncio.wait_for(watching.entered.wait(), 1)
    assert await shop.stock.remaining(offer_id) == 1  # not given back while the note is written
    reaping.cancel()  # the reaper dies here: the units stay reserved, for the next round
    with pytest.raises(asyncio.CancelledError):
        await reaping
    assert await shop.stock.remaining(offer_id) == 1
    assert await shop.orders.reap_orphans(offer_id) == 1
    assert await shop.stock.remaining(offer_id) == 2


async def test_a_key_is_watched_for_as_long_as_a_write_may_land(shop: Shop) -> None:
    writes, _ = await claim_held(shop, quantity=2)
    shop.clock.advance(seconds=LATE_WRITES.total_seconds() - 1)
    assert await shop.orders.settle_late_orders() == 0  # looked for, not landed yet
    shop.clock.advance(seconds=1)
    await writes.land()  # LATE_WRITES after the release: no longer looked for
    assert await shop.orders.settle_late_orders() == 0
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.PENDING_PAYMENT
