"""Redis losing an offer twice: what a rebuilt stock notes in MongoDB for the next rebuild (the
orders it holds, and its build, which its claims' orders name), noted by whoever checks it
before claims may use it, never for a stock that is dropped; and what it answers until it is
checked (nothing of its orders: an end and a settling check it first)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from server.domain.errors import Unavailable
from server.domain.offers import LATE_ORDERS, ClaimOutcome, EndReason, FlashOffer
from server.domain.orders import Order, OrderStatus
from server.services import offers as offers_module
from server.stock_port import StockReservations
from tests.unit.services.double_loss import (
    answered_try_again,
    notes_fail_once,
    settled_after_losing_it_again,
)
from tests.unit.services.shop import (
    HOST,
    HeldCalls,
    Shop,
    buyer,
    offers_reading,
    open_shop,
    other_process,
    rebuild_paused_at,
)


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


async def test_a_stock_dropped_as_outdated_notes_nothing() -> None:
    # A read the late order, paused, wrote its stock once Redis lost the offer again: had it
    # noted the late order held, the next rebuild would count it before the answered one.
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    writes = await answered_try_again(shop, offer)
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # no order yet: one unit
    await writes.land()
    rebuild_a, writing = await rebuild_paused_at(shop, offer, "rebuild")  # A read the late one
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

    async def slowly(order_ids: list[str], build: int) -> None:  # MongoDB slow to answer
        await asyncio.sleep(0.2)
        await noting(order_ids, build)

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
