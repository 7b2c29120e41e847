"""Redis losing an offer twice: what a rebuilt stock notes in MongoDB for the next rebuild (the
orders it holds, and its build, which its claims' orders name), noted by whoever checks it
before claims may use it, never for a stock that is dropped; and what it answers until it is
checked (nothing of its orders: an end and a settling check it first)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from server.adapters import memory_reservations
from server.domain.errors import Unavailable
from server.domain.offers import LATE_ORDERS, ClaimOutcome, EndReason, FlashOffer
from server.domain.orders import Order, OrderStatus
from server.ports import OrderStore
from server.services import offers as offers_module
from server.stock_port import StockReservations
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    HeldCalls,
    HeldWrites,
    Shop,
    buyer,
    offers_reading,
    open_shop,
    other_process,
    rebuild_paused_at,
)


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

    async def away_once(order_ids: list[str]) -> None:
        if failures:
            raise failures.pop()
        await noting(order_ids)

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


async def test_an_order_landing_late_after_a_rebuild_never_takes_an_answered_one_s_units() -> None:
    # The second rebuild counted by age the late order (its buyer heard "try again") before
    # the one the first rebuild's stock sold, and answered, since.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    writes = await answered_try_again(shop, offer)
    shop.stock.flush()  # Redis loses the offer
    answered, created = await shop.claim(offer, buyer(2), "k2")  # rebuilt, and sold
    assert created
    await writes.land()  # buyer 1's order, older, lands
    await settled_after_losing_it_again(shop, writes, answered)
    assert await shop.stock.remaining(offer.id) == 0


async def test_a_late_order_is_told_from_the_claims_on_a_rebuilt_stock_by_no_clock() -> None:
    # Creation times against the rebuild's read: buyer 1's process, its clock 1.5 s ahead,
    # created its late order after the read by its own clock, and before the answered one.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    writes = await answered_try_again(shop, offer, clock_ahead=timedelta(seconds=1.5))
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # reads the orders, and lets claims in
    shop.clock.advance(seconds=1)
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, answered)


async def test_a_retry_answered_with_its_late_order_keeps_its_unit_over_other_late_ones() -> None:
    # The late order names the lost stock's build, not the rebuilt stock's that holds its
    # unit once its retry attached it: it counted with the late ones, by age.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    never_retried = await answered_try_again(shop, offer, n=4)
    retried = await answered_try_again(shop, offer, n=1)
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # from no order: 2 units, let in
    await never_retried.land()
    await retried.land()
    order, created = await shop.claim(offer, buyer(1), "k1")  # reserved again, attached
    assert (order.id, created) == (retried.held[0].id, False)
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    await settled_after_losing_it_again(shop, never_retried, order, answered)


async def test_a_stock_rebuilt_by_a_redis_whose_clock_is_behind_comes_after_the_last_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failover to a Redis an hour behind: the new stock's build was below the one checked
    # last, so the late order of that one counted before the new stock's answered claim.
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # checked: its build noted
    writes = await answered_try_again(shop, offer)  # on that stock
    hour_behind = SimpleNamespace(
        time=lambda: time.time() - 3600, time_ns=lambda: time.time_ns() - 3600 * 10**9
    )
    monkeypatch.setattr(memory_reservations, "time", hour_behind)
    shop.stock.flush()  # the failover
    answered, created = await shop.claim(offer, buyer(2), "k2")  # rebuilt, and sold
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, answered)


async def test_a_stock_dropped_as_outdated_notes_nothing() -> None:
    # A read the late order, paused, wrote its stock once Redis lost the offer again: had it
    # noted the late order held, the next rebuild would count it before the answered one.
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    writes = await answered_try_again(shop, offer)
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # no order yet: one unit
    await writes.land()
    writing = HeldCalls(shop.stock, "rebuild")
    offers_a, _ = other_process(shop, stock=cast(StockReservations, writing))
    rebuild_a = asyncio.create_task(offers_a.rebuild(offer.id))
    await writing.entered.wait()  # A has read the late order, and pauses
    answered, created = await shop.claim(offer, buyer(2), "k2")  # the stock in use sells it
    assert created
    shop.stock.flush()  # lost again
    writing.gate.set()  # A writes what it read: outdated, dropped, rebuilt
    await rebuild_a
    await settled_after_losing_it_again(shop, writes, answered)


async def test_a_stock_is_let_in_to_only_once_its_notes_are_kept() -> None:
    # MongoDB failed the notes after the rebuild wrote the stock: the claim heard "try again",
    # and its retry let claims in without them, as if no rebuild had been.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    writes = await answered_try_again(shop, offer)
    shop.stock.flush()  # Redis loses the offer
    notes_fail_once(shop)
    with pytest.raises(Unavailable):
        await shop.claim(offer, buyer(2), "k2")
    answered, created = await shop.claim(offer, buyer(2), "k2")  # sent again
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, answered)


async def test_the_orders_a_rebuilt_stock_held_come_before_older_late_ones() -> None:
    # Buyer 1 reserved first, its write on its way; buyer 0's order was written and answered.
    # The first rebuild held buyer 0's; the second, by age, put buyer 1's late order first.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    writes = await answered_try_again(shop, offer)
    first, _ = await shop.claim(offer, buyer(0), "k0")
    shop.clock.advance(seconds=1)
    shop.stock.flush()  # Redis loses the offer
    second, created = await shop.claim(offer, buyer(2), "k2")  # rebuilt from buyer 0's, sold
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, first, second)


async def test_a_rebuild_reads_the_last_notes_after_the_orders() -> None:
    # A noted its watch and paused before reading the orders; another process rebuilt the
    # offer, noted its read and sold the unit (201); the late order landed; Redis lost the offer
    # again. A's read of the orders held all of them (not outdated), and notes read before it
    # knew no rebuild: by age, the late order took the unit.
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    writes = await answered_try_again(shop, offer)
    shop.stock.flush()  # Redis loses the offer
    reading = HeldCalls(shop.orders_store, "of_offer")
    offers_a = offers_reading(shop, reading)
    rebuild_a = asyncio.create_task(offers_a.rebuild(offer.id))
    await reading.entered.wait()  # A has noted its watch, and pauses
    shop.clock.advance(seconds=1)
    answered, created = await shop.claim(offer, buyer(2), "k2")  # rebuilt here, and sold
    assert created
    await writes.land()
    shop.stock.flush()  # lost again
    reading.gate.set()
    await rebuild_a
    await settled_after_losing_it_again(shop, writes, answered)


async def until_outdated_stock_written(shop: Shop, offer: FlashOffer) -> tuple[Order, Any]:
    """A reads the orders of the lost offer (none) and pauses; the stock in use sells buyer 2
    a unit (201); Redis loses the offer again; A writes its stock, outdated, and pauses again
    before checking it. Answers buyer 2's order, and A's rebuild with `gate` to go on."""
    shop.stock.flush()  # Redis loses the offer
    writing = HeldCalls(shop.stock, "rebuild")
    checking = HeldCalls(writing, "unconfirmed")
    offers_a, _ = other_process(shop, stock=cast(StockReservations, checking))
    rebuild_a = asyncio.create_task(offers_a.rebuild(offer.id))
    await writing.entered.wait()
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    shop.stock.flush()  # lost again
    writing.gate.set()
    await checking.entered.wait()
    return answered, (rebuild_a, checking.gate)


async def test_an_end_checks_a_rebuilt_stock_before_it_counts_what_was_taken() -> None:
    # The host's stop found A's outdated stock and took "0 taken" from it: rebuilt from the
    # ended offer, which might hold only that, the answered order lost its unit.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    answered, (rebuild_a, gate) = await until_outdated_stock_written(shop, offer)
    await shop.offers.stop(offer.id, HOST)
    assert (await shop.offers_store.get(offer.id)).taken_at_end == 1
    (ended,) = shop.events.of_type("offer.ended")
    assert ended["remaining"] == 1
    gate.set()
    await rebuild_a
    _, survivor = other_process(shop)
    for _ in range(2):
        await survivor.settle_late_orders()
    assert (await shop.orders_store.get(answered.id)).status is OrderStatus.PENDING_PAYMENT


async def test_orders_are_not_checked_against_a_stock_not_yet_checked() -> None:
    # A round checked the answered order against A's outdated stock, where its key is
    # unknown, and cancelled it.
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    answered, (rebuild_a, gate) = await until_outdated_stock_written(shop, offer)
    _, survivor = other_process(shop)
    await survivor.settle_late_orders()  # meanwhile
    gate.set()
    await rebuild_a
    for _ in range(2):
        await survivor.settle_late_orders()
    assert (await shop.orders_store.get(answered.id)).status is OrderStatus.PENDING_PAYMENT
    assert await shop.stock.remaining(offer.id) == 0


async def test_an_offer_settles_only_once_its_rebuilt_stock_is_checked() -> None:
    # A read the offer running and its orders, and died once it had written the stock, before
    # checking it; the host's stop found the stock lost. Settled on that stock, the offer booked
    # one unit; the late order that landed next was counted by the rebuild its check asked for,
    # from an offer that may hold its whole quantity: the product's next offer was oversold.
    shop = await open_shop()
    offer = await shop.launch(quantity=50, limit=1)  # all the product's stock
    await shop.claim(offer, buyer(0), "k0")
    writes = await answered_try_again(shop, offer)
    shop.stock.flush()  # Redis loses the offer
    writing = HeldCalls(shop.stock, "rebuild")
    dying = HeldCalls(writing, "unconfirmed")
    offers_a, _ = other_process(shop, stock=cast(StockReservations, dying))
    rebuild_a = asyncio.create_task(offers_a.rebuild(offer.id))
    await writing.entered.wait()  # A has read the offer running
    await shop.offers.stop(offer.id, HOST)
    writing.gate.set()
    await dying.entered.wait()  # A wrote its stock, and dies
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds() + 1)
    _, survivor = other_process(shop)
    assert await survivor.settle_due() == 1
    await shop.launch(quantity=49, limit=1)  # what the offer's one order leaves
    await writes.land()
    for _ in range(2):
        await survivor.settle_late_orders()
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    rebuild_a.cancel()


async def test_an_end_whose_check_fails_ends_all_the_same() -> None:
    # The end checked the rebuilt stock before it stopped it: a check that failed (MongoDB
    # away a moment) failed the host's stop, left the stock unstopped and the room's end
    # without its figure.
    shop = await open_shop()
    offer = await shop.launch(quantity=3, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    shop.stock.flush()  # Redis loses the offer
    rebuild_a, _ = await rebuild_paused_at(shop, offer, "unconfirmed")  # A wrote its stock
    notes_fail_once(shop)
    await shop.offers.stop(offer.id, HOST)  # answered
    assert (await shop.offers_store.get(offer.id)).taken_at_end is None  # unknown: booked whole
    refused = await shop.stock.claim(offer.id, "buyer-5", 1, "buyer-5:k", shop.clock())
    assert refused.outcome is ClaimOutcome.NOT_ACTIVE
    assert shop.events.of_type("offer.ended")
    rebuild_a.cancel()


async def test_a_sold_out_end_of_a_stock_not_yet_checked_tells_0_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It waited for the check, and told `offer.ended` without `remaining` when the check was
    # slow: a sold-out end took the offer's whole quantity whatever the stock says.
    monkeypatch.setattr(offers_module, "CHECK_SECONDS", 0.05)
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    shop.stock.flush()  # lost before its seller's sold-out end
    rebuild_a, _ = await rebuild_paused_at(shop, offer, "unconfirmed")  # A wrote its stock
    store: Any = shop.orders_store
    noting = store.checked_after_rebuild

    async def slowly(order_ids: list[str]) -> None:  # MongoDB slow to answer
        await asyncio.sleep(0.2)
        await noting(order_ids)

    store.checked_after_rebuild = slowly
    ended = await shop.offers.end(await shop.offers_store.get(offer.id), EndReason.SOLD_OUT)
    assert ended is not None
    assert (await shop.offers_store.get(offer.id)).taken_at_end == 1
    (told,) = shop.events.of_type("offer.ended")
    assert told["remaining"] == 0
    rebuild_a.cancel()


async def test_an_end_counts_a_stock_checked_elsewhere_as_it_stopped_it() -> None:
    # Checked by another process between the end's stop and its look at the stock, the stock
    # was taken for lost: nothing counted, no figure told.
    shop = await open_shop()
    offer = await shop.launch(quantity=3, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    shop.stock.flush()
    rebuild_a, confirming = await rebuild_paused_at(shop, offer, "confirm_open")
    looking = HeldCalls(shop.stock, "unconfirmed")
    ender, _ = other_process(shop, stock=cast(StockReservations, looking))
    stop = asyncio.create_task(ender.stop(offer.id, HOST))
    await looking.entered.wait()  # its stop counted nothing; it is about to look
    confirming.gate.set()
    await rebuild_a  # checked, and let in, by A
    looking.gate.set()
    await stop
    assert (await shop.offers_store.get(offer.id)).taken_at_end == 1
    (told,) = shop.events.of_type("offer.ended")
    assert told["remaining"] == 2
