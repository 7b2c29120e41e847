"""Ending a room's show ends its flash offers with it: none sells on after `room.ended`."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from server.domain.errors import Conflict, Unavailable
from server.domain.offers import EndReason
from server.domain.rooms import RoomStatus
from server.ports import OfferStore, ProductStore, RoomStore
from server.services.rooms import RoomService, StopOffers
from server.stock_port import StockReservations
from tests.unit.services.flaky import FlakyStock
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    HeldCalls,
    Shop,
    buyer,
    launch_through,
    open_shop,
    other_process,
)


def away_at_call(shop: Shop, failing: int) -> StopOffers:
    """The shop's way of stopping a room's offers, whose `failing`th call finds Redis away."""
    calls = 0

    async def stop_offers(room_id: str) -> None:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise Unavailable("live data is unreachable, try again")
        await shop.offers.stop_offers_in_room(room_id)

    return stop_offers


def rooms_of(shop: Shop, stop_offers: StopOffers | None = None) -> RoomService:
    """The room service as the app wires it: its end stops the room's offers (by default the
    shop's own way)."""
    stop = stop_offers or shop.offers.stop_offers_in_room
    return RoomService(shop.rooms, shop.products, shop.events, shop.clock, stop_offers=stop)


def room_service_saving_late(shop: Shop) -> tuple[RoomService, HeldCalls]:
    """Another process's room service, whose room writes wait at the held calls' gate."""
    saving = HeldCalls(shop.rooms, "save")
    rooms = RoomService(
        cast(RoomStore, saving), shop.products, shop.events, shop.clock,
        stop_offers=shop.offers.stop_offers_in_room,
    )  # fmt: skip
    return rooms, saving


async def test_ending_the_room_ends_its_offers_before_the_room() -> None:
    shop = await open_shop()
    running = await shop.launch(quantity=3, limit=1, duration=3600)
    counting_down = await shop.launch(quantity=2, limit=1, countdown=600)
    await shop.claim(running, buyer(1), "k1")
    await rooms_of(shop).end(shop.room_id, HOST)

    for offer in (running, counting_down):
        stored = await shop.offers_store.get(offer.id)
        assert stored.end_reason is not None
        assert stored.end_reason.value == "stopped"
    kinds = [e["type"] for e in shop.events.of_type("offer.ended", "room.ended")]
    assert kinds == ["offer.ended", "offer.ended", "room.ended"]
    shop.clock.advance(minutes=30)  # the countdown is over, the other's end time not yet come
    for offer in (running, counting_down):
        with pytest.raises(Conflict) as refused:
            await shop.claim(offer, buyer(2), f"late-{offer.id}")
        assert refused.value.code == "offer_not_active"
    assert await shop.offers.end_due() == 0  # nothing left to end by time


async def test_a_launch_that_raced_the_end_is_stopped_and_refused() -> None:
    shop = await open_shop()
    storing = HeldCalls(shop.offers_store)
    launching, _ = other_process(shop, offers_store=cast(OfferStore, storing))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=2, key="late-1"))
    await asyncio.wait_for(storing.entered.wait(), 2)  # found the room live, storing its offer
    await rooms_of(shop).end(shop.room_id, HOST)  # finds no such offer yet
    storing.gate.set()
    with pytest.raises(Conflict) as refused:
        await launch
    assert refused.value.code == "room_not_live"
    assert await shop.offers_store.open_in_room(shop.room_id) == []
    # Sent again with its key (the host's client never got the answer): the same refusal, not
    # the stopped offer as if it had launched.
    with pytest.raises(Conflict) as again:
        await launch_through(shop.offers, shop, quantity=2, key="late-1")
    assert again.value.code == "room_not_live"


async def test_a_launch_whose_offer_the_end_stopped_before_it_was_counted_is_refused() -> None:
    shop = await open_shop()
    counting = HeldCalls(shop.products, "count_launch")
    launching, _ = other_process(shop, products=cast(ProductStore, counting))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=2, key="late-2"))
    await asyncio.wait_for(counting.entered.wait(), 2)  # stored, not yet counted
    await rooms_of(shop).end(shop.room_id, HOST)  # stops the stored offer
    counting.gate.set()
    with pytest.raises(Conflict) as refused:
        await launch
    assert refused.value.code == "room_not_live"
    assert shop.events.of_type("offer.started") == []
    assert await shop.offers_store.by_launch_key(shop.room_id, f"{HOST.user_id}:late-2") is None


async def test_an_end_whose_offers_could_not_be_stopped_leaves_the_room_live_for_a_retry() -> None:
    shop = await open_shop()
    offer = await shop.launch(quantity=3, limit=1, duration=3600)
    rooms = rooms_of(shop, away_at_call(shop, 1))
    with pytest.raises(Unavailable):
        await rooms.end(shop.room_id, HOST)
    assert (await shop.rooms.get(shop.room_id)).status is RoomStatus.LIVE
    ended = await rooms.end(shop.room_id, HOST)  # the host sends it again
    assert ended.status is RoomStatus.ENDED
    assert (await shop.offers_store.get(offer.id)).end_reason is not None


async def test_an_end_against_a_hung_redis_records_every_offers_end_for_housekeeping() -> None:
    # One by one, the first offer's stop ran out the deadline and the second was never
    # recorded: it sold on until the host sent the end again.
    shop = await open_shop()
    first = await shop.launch(quantity=3, limit=1, duration=3600)
    second = await shop.launch(quantity=2, limit=1, duration=3600)
    stock = FlakyStock(shop.stock)
    offers, orders = other_process(shop, stock=cast(StockReservations, stock))
    rooms = RoomService(
        shop.rooms, shop.products, shop.events, shop.clock, stop_offers=offers.stop_offers_in_room
    )
    stock.unresponsive = True
    with pytest.raises(Unavailable):
        await rooms.end(shop.room_id, HOST)
    unfinished = await shop.offers_store.unfinished_ends(10)
    assert sorted(offer.id for offer in unfinished) == sorted([first.id, second.id])
    stock.unresponsive = False
    assert await offers.finish_ends() == 2  # this process's next round, without a retry
    for offer in (first, second):
        with pytest.raises(Conflict) as refused:
            await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
        assert refused.value.code == "offer_not_active"


async def test_viewers_hear_the_end_even_when_the_second_look_at_its_offers_fails() -> None:
    shop = await open_shop()
    rooms = rooms_of(shop, away_at_call(shop, 2))
    ended = await rooms.end(shop.room_id, HOST)  # stored: the host has no reason to retry
    assert ended.status is RoomStatus.ENDED
    assert len(shop.events.of_type("room.ended")) == 1


async def test_a_launch_whose_counted_offer_the_end_stopped_is_not_answered_as_launched() -> None:
    shop = await open_shop()
    reading = HeldCalls(shop.offers_store, "get")
    launching, _ = other_process(shop, offers_store=cast(OfferStore, reading))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=2, key="late-3"))
    await asyncio.wait_for(reading.entered.wait(), 2)  # counted: reading it for its answer
    ending, saving = room_service_saving_late(shop)
    end = asyncio.create_task(ending.end(shop.room_id, HOST))
    await asyncio.wait_for(saving.entered.wait(), 2)  # its offers stopped, the room not stored
    reading.gate.set()
    with pytest.raises(Conflict) as refused:
        await launch
    assert refused.value.code == "offer_withdrawn"  # not 201 with an offer stopped already
    saving.gate.set()
    await end
    with pytest.raises(Conflict) as again:  # sent again: the room has ended by now
        await launch_through(shop.offers, shop, quantity=2, key="late-3")
    assert again.value.code == "room_not_live"
    assert shop.events.of_type("offer.started") == []


async def test_a_launch_sent_again_after_the_room_ended_answers_the_offer_it_made() -> None:
    # The launch's answer was lost; the offer ran and sold; then the show ended. Sent again,
    # the launch must say what became of its offer, not that it never happened.
    shop = await open_shop()
    offer, _ = await launch_through(shop.offers, shop, quantity=2, key="ran-1")
    await shop.claim(offer, buyer(1), "k1")
    await rooms_of(shop).end(shop.room_id, HOST)
    again, created = await launch_through(shop.offers, shop, quantity=2, key="ran-1")
    assert (again.id, created, again.end_reason) == (offer.id, False, EndReason.STOPPED)


async def test_an_offer_stopped_by_a_process_that_pauses_sells_nothing_more_elsewhere() -> None:
    # The stopping process recorded the end, then paused (a GC pause, a stalled VM) before
    # stopping the stock: the others left the end to it for FINISH_GRACE, selling meanwhile.
    shop = await open_shop()
    offer = await shop.launch(quantity=5, limit=1, duration=3600)
    ended = await shop.offers_store.record_end(offer.id, EndReason.STOPPED, shop.clock())
    assert ended is not None  # ...and the process that recorded it paused here
    offers, orders = other_process(shop)
    assert await offers.finish_ends() == 0  # left to its process for the grace
    with pytest.raises(Conflict) as refused:
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "offer_not_active"


async def test_the_rooms_end_finishes_an_offers_end_another_process_left_unfinished() -> None:
    # Another process recorded the offer's end (a host's stop, an expiry, the room's end sent
    # to it too) and paused before stopping its stock or telling the room: the room's end
    # skipped the offer, which had ended, and went out first; the offer sold on after it.
    shop = await open_shop()
    offer = await shop.launch(quantity=5, limit=1, duration=3600)
    ended = await shop.offers_store.record_end(offer.id, EndReason.STOPPED, shop.clock())
    assert ended is not None  # ...and the process that recorded it paused here
    await rooms_of(shop).end(shop.room_id, HOST)
    with pytest.raises(Conflict) as refused:
        await shop.claim(offer, buyer(1), "k1")
    assert refused.value.code == "offer_not_active"
    kinds = [
        (e["type"], e.get("offer_id")) for e in shop.events.of_type("offer.ended", "room.ended")
    ]
    assert kinds == [("offer.ended", offer.id), ("room.ended", None)]
    assert await shop.offers_store.unfinished_ends(10) == []


async def test_a_rooms_end_sent_twice_at_once_answers_the_ended_room_both_times() -> None:
    # As one sent again after the first: a double tap, or a retry on another process while
    # the first was still at it, heard 409 "changed meanwhile".
    shop = await open_shop()
    await shop.launch(quantity=5, limit=1, duration=3600)
    first, saving = room_service_saving_late(shop)
    ending = asyncio.create_task(first.end(shop.room_id, HOST))
    await asyncio.wait_for(saving.entered.wait(), 2)  # its offers stopped, the room not stored
    second = await rooms_of(shop).end(shop.room_id, HOST)
    saving.gate.set()
    assert (await ending).status is second.status is RoomStatus.ENDED
    assert len(shop.events.of_type("offer.ended")) == 1
