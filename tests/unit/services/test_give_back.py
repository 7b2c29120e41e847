"""Units of a cancelled or expired order go back to the offer even when the reservation store
is away at that moment, or the process dies between the order's move and the give-back: the
order notes it in the same write, and housekeeping finishes the job. Likewise an offer's end: a
stop that could not stop the stock is finished by the host's retry, and an end whose process
failed or died before stopping the stock and telling the room is finished by housekeeping."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from server.domain.errors import Conflict, Unavailable
from server.domain.offers import EndReason, FlashOffer, RecoveredClaim
from server.domain.orders import HOLDS_STOCK, OrderStatus
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.stock_port import StockReservations
from tests.fakes import RecordingEvents
from tests.unit.services.flaky import (
    FlakyStock,
    flaky,
    rebuild_that_read_the_offer_before_its_stop,
)
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    HeldCalls,
    Shop,
    buyer,
    offer_with_orders,
    other_process,
)


async def test_a_cancel_while_the_stock_is_away_gives_the_units_back_later(shop: Shop) -> None:
    stock, _, orders = flaky(shop)
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    stock.away = True
    cancelled = await orders.cancel(order.id, buyer(1))
    assert cancelled.status is OrderStatus.CANCELLED  # the buyer's cancel stands
    assert await shop.stock.remaining(offer.id) == 2  # the unit is still held...
    assert await orders.return_units_due() == 0  # ...while the store stays away
    stock.away = False
    assert await shop.orders.return_units_due() == 1  # any process finishes it
    assert await shop.stock.remaining(offer.id) == 3
    assert await shop.orders.return_units_due() == 0  # once
    assert await shop.stock.remaining(offer.id) == 3


async def test_an_expiry_whose_give_back_never_ran_is_finished_by_housekeeping(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k")
    shop.clock.advance(minutes=16)
    # A process that dies between the two writes: the order moved, noting its units are due.
    order.move(OrderStatus.EXPIRED, at=shop.clock(), by="system", reason="not paid in time")
    await shop.orders_store.save_move(
        order, expected=OrderStatus.PENDING_PAYMENT, units_to_return=True
    )
    assert await shop.stock.remaining(offer.id) == 2
    assert await shop.orders.expire_due() == 0  # expired already: not expired again
    assert await shop.orders.return_units_due() == 1
    assert await shop.stock.remaining(offer.id) == 3
    [stored] = await shop.orders_store.list_for_buyer("buyer-1", 10)
    assert stored.status is OrderStatus.EXPIRED


class FlakyEvents(RecordingEvents):
    """Room events through a broker connection that can be cut."""

    away = False

    async def publish_room_event(self, room_id: str, event: dict[str, Any], **how: Any) -> int:
        if self.away:
            raise Unavailable("live events are unavailable, try again")
        return await super().publish_room_event(room_id, event, **how)


async def on_flaky_redis(
    shop: Shop,
) -> tuple[FlakyStock, FlakyEvents, OfferService, OrderService, FlashOffer]:
    """Another process whose Redis (its stock and its room's stream) can fail, and an offer."""
    stock, events = FlakyStock(shop.stock), FlakyEvents()
    offers, orders = other_process(shop, stock=cast(StockReservations, stock), events=events)
    return stock, events, offers, orders, await shop.launch(quantity=5, limit=1)


async def test_a_stop_that_failed_after_recording_the_end_is_finished_by_the_retry(
    shop: Shop,
) -> None:
    stock, events, offers, orders, offer = await on_flaky_redis(shop)
    stock.away = events.away = True  # Redis is away: the stock and the room's stream alike
    with pytest.raises(Unavailable):  # the end is recorded; nothing else happened
        await offers.stop(offer.id, HOST)
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.STOPPED
    assert events.of_type("offer.ended") == []
    stock.away = events.away = False
    stopped = await offers.stop(offer.id, HOST)  # the host tries again
    assert stopped.end_reason is EndReason.STOPPED
    with pytest.raises(Conflict) as refused:  # claims do not go on until the offer's end time
        await orders.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "offer_not_active"
    assert events.of_type("offer.ended") == [
        {"type": "offer.ended", "offer_id": offer.id, "reason": "stopped", "remaining": 5}
    ]
    await offers.stop(offer.id, HOST)  # once more: the room is not told twice
    assert len(events.of_type("offer.ended")) == 1
    assert await shop.offers_store.unfinished_ends(10) == []


async def test_a_stop_against_a_redis_that_hangs_does_not_wait_on_the_room_stream_too(
    shop: Shop,
) -> None:
    # Both are on one Redis: after the stock ran out the deadline, the stream would keep the
    # host waiting as long again for the same 503. (A Redis that refused at once is another
    # matter: the room hears of the end then, test_stock_announcements.)
    stock, events, offers, _, offer = await on_flaky_redis(shop)
    stock.unresponsive = True
    with pytest.raises(Unavailable) as refused:
        await offers.stop(offer.id, HOST)
    assert refused.value.code == "unavailable"
    assert events.events == []  # not tried
    stock.unresponsive = False
    assert await offers.finish_ends() == 1  # the next round does both
    assert len(events.of_type("offer.ended")) == 1


async def test_a_stop_that_failed_here_is_finished_by_this_process_at_once(shop: Shop) -> None:
    # Until the stock is stopped, a claim may still be taken: the process that could not stop
    # it tries again in its next round, without the grace left to another's.
    stock, events, offers, orders, offer = await on_flaky_redis(shop)
    stock.away = events.away = True
    with pytest.raises(Unavailable):
        await offers.stop(offer.id, HOST)
    stock.away = events.away = False
    elsewhere, _ = other_process(shop)
    assert await elsewhere.finish_ends() == 0  # left to the process that recorded it...
    assert await offers.finish_ends() == 1  # ...which finishes it in its next round
    with pytest.raises(Conflict) as refused:
        await orders.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "offer_not_active"
    assert len(events.of_type("offer.ended")) == 1
    assert await shop.offers_store.unfinished_ends(10) == []


async def test_an_end_the_room_could_not_hear_is_told_by_this_process_at_once(
    shop: Shop,
) -> None:
    # The stock was stopped; the room's stream failed. This process's next round tells it,
    # without the grace left to another process's end.
    _, events, offers, _, offer = await on_flaky_redis(shop)
    events.away = True
    with pytest.raises(Unavailable):
        await offers.stop(offer.id, HOST)
    events.away = False
    assert await offers.finish_ends() == 1
    assert len(events.of_type("offer.ended")) == 1
    assert await shop.offers_store.unfinished_ends(10) == []


class HangingStock(FlakyStock):
    """A Redis that takes the stop and never answers."""

    async def stop(self, offer_id: str, *, sold_out: bool = False) -> int | None:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_stop_cancelled_at_shutdown_stays_cancelled_when_the_room_cannot_be_told(
    shop: Shop,
) -> None:
    # The process shuts down while the end's stock stop hangs, and the room's stream is away
    # too: the announcement's failure must not take the place of the cancellation.
    events = FlakyEvents()
    offers, _ = other_process(
        shop, stock=cast(StockReservations, HangingStock(shop.stock)), events=events
    )
    offer = await shop.launch(quantity=5, limit=1)
    events.away = True
    stopping = asyncio.create_task(offers.stop(offer.id, HOST))
    await asyncio.sleep(0.01)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert [end.id for end in await shop.offers_store.unfinished_ends(10)] == [offer.id]


async def test_an_end_whose_process_died_before_telling_the_room_is_finished_by_another(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=5, limit=1)
    # The host's stop is recorded, and its process dies before stopping the stock.
    await shop.offers_store.record_end(offer.id, EndReason.STOPPED, shop.clock())
    offers, orders = other_process(shop)
    assert await offers.finish_ends() == 0  # left to its own process for a while
    assert shop.events.of_type("offer.ended") == []
    shop.clock.advance(seconds=14)
    assert await offers.finish_ends() == 0
    shop.clock.advance(seconds=1)
    assert await offers.finish_ends() == 1
    assert shop.events.of_type("offer.ended") == [
        {"type": "offer.ended", "offer_id": offer.id, "reason": "stopped", "remaining": 5}
    ]
    with pytest.raises(Conflict) as refused:  # and claims stop
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "offer_not_active"
    assert await shop.offers_store.unfinished_ends(10) == []
    shop.clock.advance(seconds=60)
    assert await offers.finish_ends() == 0  # once
    assert len(shop.events.of_type("offer.ended")) == 1


async def test_a_sell_out_whose_announcement_failed_is_told_once_the_stream_is_back(
    shop: Shop,
) -> None:
    events = FlakyEvents()
    offers, orders = other_process(shop, events=events)
    offer = await shop.launch(quantity=1, limit=1)
    events.away = True
    await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    # The claim that sold the last unit ended the offer in the background, and failed to tell.
    await offers.close()
    assert [o.id for o in await shop.offers_store.unfinished_ends(10)] == [offer.id]
    assert events.of_type("offer.ended") == []
    assert await offers.finish_ends() == 0  # still away: tried at once (it failed here), kept
    shop.clock.advance(seconds=15)
    assert await offers.finish_ends() == 0
    events.away = False
    assert await offers.finish_ends() == 1
    assert [e["type"] for _, e in events.events] == ["offer.stock", "offer.ended"]
    assert events.of_type("offer.stock")[-1]["remaining"] == 0
    assert events.of_type("offer.ended")[0]["reason"] == "sold_out"
    assert await shop.offers_store.unfinished_ends(10) == []


async def test_a_cancel_racing_a_stale_rebuild_after_a_loss_still_gives_the_units_back(
    shop: Shop,
) -> None:
    stock, _, orders = flaky(shop)
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    shop.stock.flush()  # Redis lost everything
    # Another process reads the orders to rebuild the offer (the order still holds its unit),
    # and writes what it read only after the cancel below found the offer gone.
    stock.stale_rebuild = [
        RecoveredClaim(o.idempotency_key, o.buyer_id, o.quantity, o.id, o.status in HOLDS_STOCK)
        for o in await shop.orders_store.of_offer(offer.id)
    ]
    await orders.cancel(order.id, buyer(1))
    assert stock.stale_rebuild is None  # it did land first
    assert await shop.stock.remaining(offer.id) == 3
    assert await shop.orders_store.units_to_return(10) == []
    _, created = await orders.claim(  # and the buyer's limit is free again
        offer.id, buyer(1), quantity=1, idempotency_key="k2", address=ADDRESS
    )
    assert created


async def test_expiries_while_the_stock_is_away_are_given_back_later_offer_by_offer(
    shop: Shop,
) -> None:
    stock, _, orders = flaky(shop)
    first, second = await shop.launch(quantity=3, limit=3), await shop.launch(quantity=3, limit=3)
    for offer, key in ((first, "a1"), (first, "a2"), (second, "b1")):
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key=key, address=ADDRESS)
    stock.away = True
    shop.clock.advance(minutes=16)
    assert await orders.expire_due() == 3  # the orders expire; their units wait
    assert len(await shop.orders_store.units_to_return(10)) == 3
    stock.away, stock.away_for = False, {first.id}  # only the first offer's stock is away now
    tries: list[None] = []

    async def tried() -> None:
        tries.append(None)

    stock.before_release = tried
    assert await orders.return_units_due() == 1  # the second's unit is not held up by it
    # One try for the first offer's two units: a stock that hangs would cost each try 5 s.
    assert len(tries) == 2
    stock.before_release = None
    assert await shop.stock.remaining(second.id) == 3
    assert await shop.stock.remaining(first.id) == 1
    stock.away_for = set()
    assert await orders.return_units_due() == 2
    assert await shop.stock.remaining(first.id) == 3


async def test_a_stopped_offer_stays_stopped_when_rebuilt_after_a_loss(shop: Shop) -> None:
    offer = await shop.launch(quantity=5, limit=1)
    await shop.claim(offer, buyer(1), "k")  # this process now knows the offer, still running
    await shop.offers.stop(offer.id, HOST)
    shop.stock.flush()  # Redis lost everything
    with pytest.raises(Conflict) as refused:  # the rebuild reads the end, not a stale copy
        await shop.claim(offer, buyer(2), "k")
    assert refused.value.code == "offer_not_active"


async def test_an_offer_stopped_while_a_rebuild_ran_stays_stopped(shop: Shop) -> None:
    stock, _, orders = flaky(shop)
    offer = await shop.launch(quantity=5, limit=1)
    shop.stock.flush()  # Redis lost everything
    # Another process's claim finds the offer lost and rebuilds it from what it read: the offer
    # running. Before it writes the stock, the host's stop lands, and finds no stock to stop.
    stock.before_rebuild = lambda: shop.offers.stop(offer.id, HOST)
    with pytest.raises(Conflict) as refused:
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "offer_not_active"
    with pytest.raises(Conflict):  # and stays refused
        await shop.claim(offer, buyer(2), "k")


async def test_a_rebuild_that_read_the_offer_before_a_stop_cannot_reopen_it(shop: Shop) -> None:
    """Redis lost the offer twice. This process's rebuild read it running; meanwhile another
    process rebuilt it, the host's stop found that stock (3 taken), and Redis lost it again.
    Written from the stale read, and with the database gone before it could read the offer
    again, the stock must take no more than those 3: the host has launched the rest."""
    offer = await offer_with_orders(shop, 50, 3)  # all the product's stock
    shop.stock.flush()
    await rebuild_that_read_the_offer_before_its_stop(shop, offer, rebuilt_meanwhile=True)
    assert (await shop.offers_store.get(offer.id)).taken_at_end == 3
    await shop.launch(quantity=50 - 3, limit=1)
    with pytest.raises(Conflict) as refused:  # this claim's rebuild reads the offer ended
        await shop.claim(offer, buyer(4), "k")
    assert refused.value.code == "offer_not_active"
    assert len(await shop.orders_store.of_offer(offer.id)) == 3


async def test_a_late_confirmation_does_not_open_a_later_rebuild(shop: Shop) -> None:
    """Redis lost the offer twice. Process B rebuilt it and read it running, then stalled
    before letting claims in; the host's stop found B's stock (3 taken) and Redis lost it
    again; process A, which had read the offer running, wrote it again and could not read it
    again. B's confirmation must not open A's stock."""
    offer = await offer_with_orders(shop, 50, 3)  # all the product's stock
    shop.stock.flush()
    stalling = HeldCalls(shop.stock, "confirm_open")
    b_offers, _ = other_process(shop, stock=cast(StockReservations, stalling))
    b_rebuild = asyncio.create_task(b_offers.rebuild(offer.id))
    await asyncio.wait_for(stalling.entered.wait(), 2)
    await rebuild_that_read_the_offer_before_its_stop(shop, offer, rebuilt_meanwhile=False)
    assert (await shop.offers_store.get(offer.id)).taken_at_end == 3  # checked, then counted
    await shop.launch(quantity=50 - 3, limit=1)
    stalling.gate.set()
    await b_rebuild
    with pytest.raises(Conflict) as refused:
        await shop.claim(offer, buyer(4), "k")
    assert refused.value.code == "offer_not_active"
    assert len(await shop.orders_store.of_offer(offer.id)) == 3


async def test_ends_that_keep_failing_do_not_hold_up_the_others(shop: Shop) -> None:
    launched = [await shop.launch(quantity=5, limit=1) for _ in range(5)]
    for offer in launched:  # all recorded; their processes died before finishing them
        await shop.offers_store.record_end(offer.id, EndReason.STOPPED, shop.clock())
    # The four tried first keep failing (their stock stays out of reach), and a round stops at
    # its first failure: the fifth must still be finished.
    *stuck, other = sorted(offer.id for offer in launched)
    stock, offers, _ = flaky(shop)
    stock.away_for = set(stuck)
    assert await offers.finish_ends() == 0  # left to their own processes for a while
    shop.clock.advance(seconds=15)
    # Within five rounds (the first, within the grace, already failed one's stop).
    assert sorted([await offers.finish_ends() for _ in range(5)]) == [0, 0, 0, 0, 1]
    assert sorted(o.id for o in await shop.offers_store.unfinished_ends(10)) == stuck
    assert other in [e["offer_id"] for e in shop.events.of_type("offer.ended")]
