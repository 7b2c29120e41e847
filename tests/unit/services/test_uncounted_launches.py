"""A launch stores its offer, then counts it against its product's stock. Between the two the
offer is hidden from the room: a launch that dies there is counted when sent again with its
key, or withdrawn by housekeeping 30 s later; of that withdrawal and a count, the first wins,
and a launch whose offer ended before it counted it answers 409 `offer_withdrawn`. A launch sent
again after its host stopped the offer answers it stopped, and keeps its key; one that died
after counting its offer, before telling the room, is told by housekeeping 15 s later."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from server.domain.errors import Conflict
from server.domain.offers import EndReason, FlashOffer, StockFigure
from server.ports import OfferStore, ProductStore
from server.services.bookings import UNCOUNTED_AFTER
from server.services.housekeeping import Housekeeper
from server.services.offers import UNTOLD_AFTER
from tests.unit.services.shop import (
    HOST,
    STOCK,
    HeldCalls,
    Shop,
    buyer,
    launch_through,
    other_process,
    settle,
)

Launch = asyncio.Task[tuple[FlashOffer, bool]]


async def launch_held_at_its_count(shop: Shop, **launch: Any) -> tuple[Launch, HeldCalls]:
    """A launch through another process, held once it has stored its offer, before counting
    it: set the returned gate to let it go on."""
    counting = HeldCalls(shop.products, "count_launch")
    launching, _ = other_process(shop, products=cast(ProductStore, counting))
    held = asyncio.create_task(launch_through(launching, shop, **launch))
    await asyncio.wait_for(counting.entered.wait(), 2)
    return held, counting


async def launch_that_died_uncounted(shop: Shop, **launch: Any) -> None:
    """A launch whose process died between storing its offer and counting it."""
    held, _ = await launch_held_at_its_count(shop, **launch)
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held


async def test_a_launch_sent_again_after_its_first_died_uncounted_is_checked_again(
    shop: Shop,
) -> None:
    """The first attempt stored its offer and died before counting it; a count that had read
    the bookings before the offer was stored then lowered the stock. Sent again, the launch
    must not announce an offer the stock no longer has room for."""
    counting_store = HeldCalls(shop.products, "set_stock")
    counting, _ = other_process(shop, products=cast(ProductStore, counting_store))
    count = asyncio.create_task(counting.set_product_stock(HOST, shop.product_id, 10))
    await asyncio.wait_for(counting_store.entered.wait(), 2)  # no bookings read

    first, _ = await launch_held_at_its_count(shop, quantity=30, key="again")
    counting_store.gate.set()
    assert (await count).stock == 10  # it never saw the offer
    first.cancel()  # the process dies
    with pytest.raises(asyncio.CancelledError):
        await first

    with pytest.raises(Conflict) as refused:
        await launch_through(shop.offers, shop, quantity=30, key="again")
    assert refused.value.code == "stock_changed"
    [withdrawn] = await shop.offers_store.of_product(shop.product_id)
    assert withdrawn.end_reason is not None
    assert shop.events.of_type("offer.started") == []


async def test_a_launch_sent_again_after_its_first_died_uncounted_counts_it(shop: Shop) -> None:
    await launch_that_died_uncounted(shop, quantity=30, key="again")
    assert (await shop.products.get(shop.product_id)).launches == 0
    assert await shop.offers.open_in_room(shop.room_id) == []  # the room is not shown it

    offer, created = await launch_through(shop.offers, shop, quantity=30, key="again")
    assert not created
    assert offer.end_reason is None
    assert (await shop.products.get(shop.product_id)).launches == 1  # a count now sees it
    assert len(shop.events.of_type("offer.started")) == 1
    assert [o.id for o, _ in await shop.offers.open_in_room(shop.room_id)] == [offer.id]


async def test_a_launch_housekeeping_withdrew_before_it_counted_answers_409(shop: Shop) -> None:
    """Its count took over 30 s (or its process's clock is behind housekeeping's): of the
    withdrawal and the count, the first wins, and the room never hears the offer started."""
    launch, slow_store = await launch_held_at_its_count(shop, quantity=30, key="slow")
    shop.clock.advance(seconds=UNCOUNTED_AFTER.total_seconds() + 1)
    assert await shop.offers.withdraw_uncounted() == 1
    slow_store.gate.set()
    with pytest.raises(Conflict) as refused:
        await launch
    assert refused.value.code == "offer_withdrawn"
    assert shop.events.of_type("offer.started") == []
    _, created = await launch_through(shop.offers, shop, quantity=30, key="slow")
    assert created  # its key was freed: sent again, it is a new launch


async def test_a_launch_whose_offer_ran_out_of_time_before_it_counted_frees_its_key(
    shop: Shop,
) -> None:
    launch, slow_store = await launch_held_at_its_count(shop, quantity=30, duration=10, key="k")
    shop.clock.advance(seconds=11)
    assert await shop.offers.end_due() == 1
    slow_store.gate.set()
    with pytest.raises(Conflict) as refused:
        await launch
    assert refused.value.code == "offer_withdrawn"
    offer, created = await launch_through(shop.offers, shop, quantity=30, duration=10, key="k")
    assert created  # sent again as the answer says: a new offer, not the expired one
    assert offer.end_reason is None


async def test_a_withdrawal_that_lost_to_the_count_leaves_the_key_of_an_offer_ended_since(
    shop: Shop,
) -> None:
    """Housekeeping read the launch as uncounted; the launch counted it and answered 201, and
    the host stopped it; then housekeeping's withdrawal lands. The key still names the offer:
    the host's launch sent again gets it back rather than a second offer."""
    launch, slow_store = await launch_held_at_its_count(shop, quantity=30, key="k")
    shop.clock.advance(seconds=UNCOUNTED_AFTER.total_seconds() + 1)
    listing = HeldCalls(shop.offers_store, "uncounted_launches", answer_late=True)
    housekeeping, _ = other_process(shop, offers_store=cast(OfferStore, listing))
    withdrawing = asyncio.create_task(housekeeping.withdraw_uncounted())
    await asyncio.wait_for(listing.entered.wait(), 2)
    slow_store.gate.set()
    offer, created = await launch
    assert created
    await shop.offers.stop(offer.id, HOST)
    listing.gate.set()
    assert await withdrawing == 0
    again, created_again = await launch_through(shop.offers, shop, quantity=30, key="k")
    assert (again.id, created_again) == (offer.id, False)


async def test_a_launch_sent_again_that_counts_first_is_not_withdrawn(shop: Shop) -> None:
    await launch_that_died_uncounted(shop, quantity=30, key="again")
    shop.clock.advance(seconds=UNCOUNTED_AFTER.total_seconds() + 1)
    # Housekeeping reads the offer as uncounted, then the host's launch sent again counts it
    # before housekeeping withdraws what it read.
    listing = HeldCalls(shop.offers_store, "uncounted_launches", answer_late=True)
    housekeeping, _ = other_process(shop, offers_store=cast(OfferStore, listing))
    withdrawing = asyncio.create_task(housekeeping.withdraw_uncounted())
    await asyncio.wait_for(listing.entered.wait(), 2)
    offer, created = await launch_through(shop.offers, shop, quantity=30, key="again")
    assert not created
    listing.gate.set()
    assert await withdrawing == 0
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    assert shop.events.of_type("offer.ended") == []


async def test_housekeeping_withdraws_a_launch_that_died_uncounted(shop: Shop) -> None:
    """Nobody sends it again: the offer would book 30 units until its end, a day later, and a
    count made meanwhile may not have seen it."""
    await launch_that_died_uncounted(shop, quantity=30, key="lost")
    [stored] = await shop.offers_store.of_product(shop.product_id)
    housekeeper = Housekeeper(shop.offers, shop.orders, lambda: [])
    shop.clock.advance(seconds=UNCOUNTED_AFTER.total_seconds() - 1)
    await housekeeper.run_once()  # its launch may still be counting it
    assert (await shop.offers_store.get(stored.id)).end_reason is None
    shop.clock.advance(seconds=2)
    await housekeeper.run_once()
    withdrawn = await shop.offers_store.get(stored.id)
    assert withdrawn.end_reason is not None
    assert withdrawn.end_reason.value == "stopped"
    assert withdrawn.taken_at_end == 0
    assert shop.events.of_type("offer.started") == []
    assert [e["offer_id"] for e in shop.events.of_type("offer.ended")] == [stored.id]
    # Its key and its stock are free at once: the host's launch sent again is a new offer.
    offer, created = await launch_through(shop.offers, shop, quantity=STOCK, key="lost")
    assert created
    assert offer.id != stored.id


async def test_a_launch_sent_again_after_its_host_stopped_it_answers_it_stopped(
    shop: Shop,
) -> None:
    offer, _ = await launch_through(shop.offers, shop, quantity=30, key="L1")
    # The host's stop lands while the launch sent again runs, after it read the offer running.
    stop_first = HeldCalls(shop.offers_store, "launch_counted")
    again_offers, _ = other_process(shop, offers_store=cast(OfferStore, stop_first))
    again = asyncio.create_task(launch_through(again_offers, shop, quantity=30, key="L1"))
    await asyncio.wait_for(stop_first.entered.wait(), 2)
    await shop.offers.stop(offer.id, HOST)
    stop_first.gate.set()
    answered, created = await again
    assert (answered.id, answered.end_reason, created) == (offer.id, EndReason.STOPPED, False)
    # Its key still names it: sent once more, it is not launched afresh.
    once_more, created = await launch_through(shop.offers, shop, quantity=30, key="L1")
    assert (once_more.id, created) == (offer.id, False)
    kinds = [e["type"] for e in shop.events.of_type("offer.started", "offer.ended")]
    assert kinds == ["offer.started", "offer.ended"]


async def test_an_announcement_read_before_the_end_is_not_told_after_it(shop: Shop) -> None:
    await launch_through(shop.offers, shop, quantity=30, key="L1")
    view = shop.offers.view

    async def read_then_stopped(offer_id: str) -> tuple[FlashOffer, StockFigure | None]:
        seen = await view(offer_id)
        await shop.offers.end(seen[0], EndReason.STOPPED)  # the host's stop, right after
        return seen

    shop.offers.view = read_then_stopped  # type: ignore[method-assign]
    await launch_through(shop.offers, shop, quantity=30, key="L1")  # sent again
    kinds = [e["type"] for e in shop.events.of_type("offer.started", "offer.ended")]
    assert kinds == ["offer.started", "offer.ended"]  # its late `offer.started` dropped


async def test_a_launch_that_died_before_telling_the_room_is_told_by_housekeeping(
    shop: Shop,
) -> None:
    publish = shop.events.publish_room_event

    async def dies_at_the_announcement(room_id: str, event: dict[str, Any], **fence: Any) -> int:
        if event["type"] == "offer.started":
            raise asyncio.CancelledError  # the process dies: counted, untold
        return await publish(room_id, event, **fence)

    shop.events.publish_room_event = dies_at_the_announcement  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await launch_through(shop.offers, shop, quantity=30)
    shop.events.publish_room_event = publish  # type: ignore[method-assign]
    [offer] = await shop.offers_store.of_product(shop.product_id)
    assert offer.counted
    # Three processes, each slow to note the offer told: all of them find it untold.
    noting = HeldCalls(shop.offers_store, "launch_told")
    processes = [other_process(shop, offers_store=cast(OfferStore, noting)) for _ in range(3)]
    housekeepers = [Housekeeper(offers, orders, list) for offers, orders in processes]
    await housekeepers[0].run_once()
    assert shop.events.of_type("offer.started") == []  # its launch may still be telling it
    shop.clock.advance(seconds=UNTOLD_AFTER.total_seconds() + 1)
    rounds = asyncio.gather(*(housekeeper.run_once() for housekeeper in housekeepers))
    await asyncio.sleep(0.05)
    noting.gate.set()
    await rounds
    [started] = shop.events.of_type("offer.started")  # by one of them
    assert started["offer"]["id"] == offer.id
    await housekeepers[1].run_once()
    assert len(shop.events.of_type("offer.started")) == 1  # told once


async def test_a_launch_whose_counted_offer_sold_out_before_it_answered_is_answered_launched(
    shop: Shop,
) -> None:
    """Counted, an offer is listed and may be claimed before its launch has answered. One that
    sold out meanwhile was taken for one the room's end had stopped: answered "withdrawn,
    launch it again", its key freed, and a launch sent again made a second offer."""
    reading = HeldCalls(shop.offers_store, "get")
    launching, _ = other_process(shop, offers_store=cast(OfferStore, reading))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=2, limit=1, key="k"))
    await asyncio.wait_for(reading.entered.wait(), 2)  # counted: reading it for its answer
    [(listed, _)] = await shop.offers.in_room(shop.room_id)
    for n in (1, 2):
        await shop.claim(listed, buyer(n), "k")
    await settle()  # the claim that took the last unit ended it
    reading.gate.set()
    offer, created = await launch
    assert (offer.id, offer.end_reason, created) == (listed.id, EndReason.SOLD_OUT, True)
    again, created = await launch_through(shop.offers, shop, quantity=2, limit=1, key="k")
    assert (again.id, created) == (listed.id, False)
