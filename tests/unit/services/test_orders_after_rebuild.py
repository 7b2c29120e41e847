"""An order write that misses its deadline while Redis loses its offer, and lands after a rebuild
read the offer's orders without it: its key unknown to the rebuilt stock, its units sold again.
Housekeeping checks each pending order of a rebuilt offer once, and cancels such an order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import pytest

from server.domain.errors import Unavailable
from server.domain.identity import scoped_key
from server.domain.offers import LATE_ORDERS, ORPHAN_AFTER
from server.domain.orders import Order, OrderStatus
from server.ports import OrderStore
from server.services import late_orders
from server.services.late_orders import LATE_WRITES
from server.services.stock_rebuilds import StockRebuilds
from server.stock_port import StockReservations
from tests.unit.services.flaky import flaky
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    HeldCalls,
    HeldWrites,
    Shop,
    assert_cancelled_and_told,
    buyer,
    offer_with_orders,
    other_process,
    units_held,
)


async def lost_and_rebuilt_before_it_lands(shop: Shop, quantity: int) -> tuple[HeldWrites, str]:
    """An offer of `quantity`, one per buyer: buyer 0 has an order; buyer 1's claim has its
    write held; then Redis loses the offer, and buyer 2's claim rebuilds it from the orders,
    without buyer 1's."""
    offer = await offer_with_orders(shop, quantity=quantity, orders=1)
    writes = HeldWrites(shop.orders_store)
    _, late_process = other_process(shop, orders=cast(OrderStore, writes))
    with pytest.raises(Unavailable):
        await late_process.claim(
            offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS
        )
    shop.stock.flush()
    await shop.claim(offer, buyer(2), "k2")  # rebuilt, k1 unknown
    return writes, offer.id


async def test_an_order_landing_after_a_rebuild_read_the_orders_is_cancelled(
    shop: Shop,
) -> None:
    writes, offer_id = await lost_and_rebuilt_before_it_lands(shop, quantity=3)
    offer = await shop.offers_store.get(offer_id)
    await shop.claim(offer, buyer(3), "k3")  # the unit k1 had reserved sells again
    await writes.land()
    assert await units_held(shop, offer_id) == 4  # 4 of 3, until housekeeping finds it
    told_before = len(shop.events.private)
    _, survivor = other_process(shop)  # neither the claimer nor the rebuilder is needed
    assert await survivor.settle_late_orders() == 1
    assert await units_held(shop, offer_id) == 3
    assert await shop.stock.remaining(offer_id) == 0
    await assert_cancelled_and_told(shop, writes, told_before)
    assert await shop.orders.settle_late_orders() == 0  # settled once
    # Sent again, the claim gets its order, cancelled: its key was kept as it was cancelled.
    (cancelled,) = [
        o for o in await shop.orders_store.of_offer(offer_id) if o.buyer_id == "buyer-1"
    ]
    again, created = await shop.claim(offer, buyer(1), "k1")
    assert (again.id, again.status, created) == (cancelled.id, OrderStatus.CANCELLED, False)
    assert await shop.stock.remaining(offer_id) == 0


async def test_the_orders_a_rebuild_counted_are_kept_and_checked_once(shop: Shop) -> None:
    writes, offer_id = await lost_and_rebuilt_before_it_lands(shop, quantity=4)
    checks = HeldCalls(shop.stock, "attach_order")
    _, watcher = other_process(shop, stock=cast(StockReservations, checks))
    checks.gate.set()
    assert await watcher.settle_late_orders() == 0
    kept = await shop.orders_store.of_offer(offer_id)  # buyer 0's, counted; buyer 2's, new
    assert [o.status for o in kept] == [OrderStatus.PENDING_PAYMENT] * 2
    assert checks.calls == 1  # buyer 2's checked, attached; buyer 0's noted by the rebuild
    assert await watcher.settle_late_orders() == 0
    assert checks.calls == 1  # not again
    await writes.land()  # k1's order, with a unit free for it, but the stock does not know it
    assert await watcher.settle_late_orders() == 1
    assert await units_held(shop, offer_id) == 2
    assert await shop.stock.remaining(offer_id) == 2


@pytest.mark.parametrize(
    ("lands_after", "cancelled"), [(LATE_WRITES - timedelta(seconds=1), 1), (LATE_WRITES, 0)]
)
async def test_an_offer_is_watched_for_as_long_as_a_write_may_land_after_its_rebuild(
    shop: Shop, lands_after: timedelta, cancelled: int
) -> None:
    writes, _ = await lost_and_rebuilt_before_it_lands(shop, quantity=3)
    shop.clock.advance(seconds=lands_after.total_seconds())
    await writes.land()
    assert await shop.orders.settle_late_orders() == cancelled
    (late,) = writes.held
    status = (await shop.orders_store.get(late.id)).status
    assert status is (OrderStatus.CANCELLED if cancelled else OrderStatus.PENDING_PAYMENT)


async def test_orders_checked_while_their_stock_is_being_rebuilt_wait_for_it(
    shop: Shop,
) -> None:
    # Redis lost the stock of an offer that has settled; a rebuild (a buyer's cancel, an
    # expiry) has noted the offer and is reading its orders when housekeeping checks them.
    offer = await offer_with_orders(shop, quantity=3, orders=2)
    await shop.offers.stop(offer.id, HOST)
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds() + 1)
    assert await shop.orders.settle_due() == 1
    shop.stock.flush()
    reading = HeldCalls(shop.orders_store, "of_offer", answer_late=True)
    rebuilds = StockRebuilds(shop.offers_store, cast(OrderStore, reading), shop.stock, shop.clock)
    rebuilding = asyncio.create_task(rebuilds.rebuild(offer.id))
    await asyncio.wait_for(reading.entered.wait(), 1)

    assert await shop.orders.settle_late_orders() == 0  # not now: the stock is not there
    reading.gate.set()
    await rebuilding
    assert await shop.orders.settle_late_orders() == 0  # attached: the rebuild counted them
    orders: list[Order] = await shop.orders_store.of_offer(offer.id)
    assert [o.status for o in orders] == [OrderStatus.PENDING_PAYMENT] * 2


async def test_an_offer_lost_again_leaves_room_for_the_other_offers_checks(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(late_orders, "CHECKS_A_ROUND", 2)
    first = await offer_with_orders(shop, quantity=3, orders=2)  # its orders are read first
    writes, _ = await lost_and_rebuilt_before_it_lands(shop, quantity=3)
    await shop.offers.rebuild(first.id)
    await shop.claim(first, buyer(5), "k5")  # an order on the rebuilt stock, to be checked
    shop.stock.forget(first.id)  # lost again, and nothing asks for it
    await writes.land()
    assert sum([await shop.orders.settle_late_orders() for _ in range(5)]) == 1
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    assert await shop.stock.remaining(first.id) == 0  # rebuilt by the checks, its orders kept


async def test_a_check_that_fails_fails_the_round_once_the_others_are_done(shop: Shop) -> None:
    first = await offer_with_orders(shop, quantity=3, orders=2)
    writes, _ = await lost_and_rebuilt_before_it_lands(shop, quantity=3)
    await shop.offers.rebuild(first.id)
    await shop.claim(first, buyer(5), "k5")  # an order on the rebuilt stock, to be checked
    await writes.land()
    stock, _, watcher = flaky(shop)
    stock.away_for.add(first.id)  # its Redis calls fail
    with pytest.raises(Unavailable):
        await watcher.settle_late_orders()
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    stock.away_for.clear()
    assert await watcher.settle_late_orders() == 0  # the first offer's orders: attached


async def test_a_retry_orphaned_after_its_order_was_cancelled_gives_its_units_back(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes, offer_id = await lost_and_rebuilt_before_it_lands(shop, quantity=3)
    await writes.land()

    async def away(*args: Any, **kwargs: Any) -> bool:
        raise Unavailable("the reservation store is away")

    monkeypatch.setattr(shop.stock, "remember_released", away)  # as the cancel keeps its key
    assert await shop.orders.settle_late_orders() == 1  # its key unknown to the stock
    assert not await shop.stock.knows_claim(offer_id, scoped_key(buyer(1).user_id, "k1"))
    # Sent again, through a process whose write misses its deadline again, and that dies.
    again = HeldWrites(shop.orders_store)
    _, retrying = other_process(shop, orders=cast(OrderStore, again))
    with pytest.raises(Unavailable):
        await retrying.claim(offer_id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS)
    assert await shop.stock.remaining(offer_id) == 0  # a unit reserved for the retry
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    release = shop.stock.release

    async def away_once(*args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(shop.stock, "release", release)
        raise Unavailable("the reservation store is away")

    monkeypatch.setattr(shop.stock, "release", away_once)  # nothing may be left half done
    with pytest.raises(Unavailable):
        await shop.orders.reap_orphans(offer_id)
    assert await shop.orders.reap_orphans(offer_id) == 1  # its key has an order: cancelled
    assert await shop.stock.remaining(offer_id) == 1
    assert await units_held(shop, offer_id) == 2


async def test_an_order_landing_after_its_lost_offer_settled_is_cancelled(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    writes = HeldWrites(shop.orders_store)
    _, late_process = other_process(shop, orders=cast(OrderStore, writes))
    with pytest.raises(Unavailable):
        await late_process.claim(
            offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS
        )
    shop.stock.flush()  # its reservation lost: no reaper will ever see it
    await shop.offers.stop(offer.id, HOST)
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds() + 1)
    assert await shop.orders.settle_due() == 1  # booking what its orders hold: nothing
    await writes.land()
    assert await shop.orders.settle_late_orders() == 1
    assert await units_held(shop, offer.id) == 0


async def test_an_order_a_rebuild_held_under_a_key_given_up_is_held_by_the_next(
    shop: Shop,
) -> None:
    """Held by a rebuild (and its buyer told of it by the next round), an order under a key
    the reaper gave up was counted last by the next rebuild, after an order that landed late
    since: the late one kept the unit, and the one held was cancelled."""
    offer = await shop.launch(quantity=1, limit=1)
    given_up = HeldWrites(shop.orders_store)
    _, first = other_process(shop, orders=cast(OrderStore, given_up))
    with pytest.raises(Unavailable):
        await first.claim(offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS)
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    await shop.orders.reap_orphans(offer.id)  # its units back, its key noted
    late = HeldWrites(shop.orders_store)
    _, second = other_process(shop, orders=cast(OrderStore, late))
    with pytest.raises(Unavailable):
        await second.claim(offer.id, buyer(2), quantity=1, idempotency_key="k2", address=ADDRESS)
    await given_up.land()
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)  # buyer 1's order fits: held
    await late.land()  # buyer 2's, after the read
    shop.stock.flush()  # lost again before any round
    for _ in range(3):
        await shop.orders.settle_late_orders()
    standing = [o for o in await shop.orders_store.of_offer(offer.id) if o.holds_stock]
    assert [o.buyer_id for o in standing] == ["buyer-1"]
    assert await units_held(shop, offer.id) == 1
