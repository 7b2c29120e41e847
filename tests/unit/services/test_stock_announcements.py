"""How the room hears an offer's stock: coalesced to a cadence shared by every process, the last
unit and sold out at once, sold out once and by whoever ends the offer, nothing after the end,
no change lost. Who ends an offer that sells out: test_sold_out_ends.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable
from typing import Any, cast

import pytest

from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Unavailable
from server.domain.offers import EndReason, FlashOffer, StockFigure
from server.ports import OrderStore
from server.services import stock_announcer
from server.services.stock_announcer import STOCK_ANNOUNCE_SECONDS, StockAnnouncer
from server.stock_port import StockReservations
from tests.fakes import RecordingEvents
from tests.unit.services.shop import (
    ADDRESS,
    HeldCalls,
    Shop,
    buyer,
    other_process,
    second_process,
    settle,
)


async def test_selling_out_ends_the_offer_once_and_announces_zero(shop: Shop) -> None:
    offer = await shop.launch(quantity=2, limit=1)
    await asyncio.gather(*(shop.claim(offer, buyer(n), f"k{n}") for n in range(2)))
    await settle()
    assert shop.events.of_type("offer.stock")[-1]["remaining"] == 0
    ended = shop.events.of_type("offer.ended")
    assert ended == [
        {"type": "offer.ended", "offer_id": offer.id, "reason": "sold_out", "remaining": 0}
    ]


async def test_processes_claiming_together_keep_one_stock_cadence_for_the_room(
    shop: Shop,
) -> None:
    other_orders = second_process(shop)
    offer = await shop.launch(quantity=50, limit=1)
    for n in range(40):
        service = shop.orders if n % 2 else other_orders
        await service.claim(offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS)
        await asyncio.sleep(0.02)
    await asyncio.sleep(3 * STOCK_ANNOUNCE_SECONDS)  # the losers' last tries
    stock = [
        (at, event["remaining"])
        for (_, event), at in zip(shop.events.events, shop.events.published_at, strict=True)
        if event["type"] == "offer.stock"
    ]
    # One announcement per period for the room, not one per process; the last change is heard.
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(stock)]
    assert min(gaps) >= 0.9 * STOCK_ANNOUNCE_SECONDS
    announced = [remaining for _, remaining in stock]
    assert announced == sorted(announced, reverse=True)
    assert announced[-1] == 10


async def test_a_process_that_loses_the_stock_gate_still_announces_its_change(
    shop: Shop,
) -> None:
    other = second_process(shop)
    offer = await shop.launch(quantity=50, limit=1)
    await shop.claim(offer, buyer(1), "k")  # announced at once: the gate is this process's
    await asyncio.sleep(0.05)
    await other.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(2 * STOCK_ANNOUNCE_SECONDS)  # the other process tries again, and wins
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [49, 48]


async def test_the_last_unit_is_announced_at_once_past_the_cadence_and_the_gate(
    shop: Shop,
) -> None:
    other = second_process(shop)
    offer = await shop.launch(quantity=4, limit=1)
    await shop.claim(offer, buyer(1), "k")  # 3 left: announced at once, the gate is taken
    await asyncio.sleep(0.01)
    await shop.claim(offer, buyer(2), "k")  # 2 left: waits for the next period
    await asyncio.sleep(0.05)
    # 1 left, from the process that does not hold the gate, within the same period.
    await other.claim(offer.id, buyer(3), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [3, 1]
    await shop.claim(offer, buyer(4), "k")
    await asyncio.sleep(0.05)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [3, 1, 0]
    assert len(shop.events.of_type("offer.ended")) == 1


class SlowReads:
    """Another process's view of the same reservations, whose reads of the stock come back a
    moment after they were made (a busy event loop)."""

    def __init__(self, shared: MemoryStockReservations) -> None:
        self._shared = shared
        self.delay = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def figure(self, offer_id: str) -> StockFigure:
        figure = await self._shared.figure(offer_id)
        await asyncio.sleep(self.delay)
        return figure


class SlowPublish:
    """The room's events as another process sends them: each arrives a moment late (a busy
    event loop, a slow link to Redis)."""

    def __init__(self, shared: RecordingEvents, delay: float) -> None:
        self._shared = shared
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def publish_room_event(self, room_id: str, event: dict[str, Any], **topic: Any) -> int:
        await asyncio.sleep(self.delay)
        return await self._shared.publish_room_event(room_id, event, **topic)


async def test_a_figure_known_before_the_end_and_sent_after_it_is_dropped(shop: Shop) -> None:
    """...but the last unit is told all the same, by the process that sold it."""
    slow = SlowPublish(shop.events, delay=0.2)
    _, other = other_process(shop, events=cast(RecordingEvents, slow))
    offer = await shop.launch(quantity=3, limit=1)
    await shop.claim(offer, buyer(1), "k")
    # 1 left, in the slow process, whose announcement reaches the room after...
    await other.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)
    await shop.claim(offer, buyer(3), "k")  # ... this process sold the last unit and ended it
    await settle()
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds[-3:] == [("offer.stock", 1), ("offer.stock", 0), ("offer.ended", 0)]
    assert kinds.count(("offer.stock", 1)) == 1  # the slow process's own came too late


async def test_the_last_unit_is_told_even_when_the_next_claim_sells_it_at_once(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=4, limit=1)
    # Four claims together: by the time any announcement could read the stock, it is 0.
    await asyncio.gather(*(shop.claim(offer, buyer(n), "k") for n in range(4)))
    await settle()
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds[-3:] == [("offer.stock", 1), ("offer.stock", 0), ("offer.ended", 0)]
    assert len(kinds) == len(set(kinds))  # each figure once


async def test_the_last_unit_is_told_by_the_process_that_sold_it_when_another_left_it(
    shop: Shop,
) -> None:
    """Process A's claim leaves 1; its "1 left" has not reached the room (here: never does, as
    when it arrives after the end). Process B sells the last unit and ends the offer: the
    room still hears 1 before 0."""
    lagging = RecordingEvents()
    _, left_it = other_process(shop, events=lagging)
    offer = await shop.launch(quantity=2, limit=1)
    await left_it.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await shop.claim(offer, buyer(2), "k")
    await settle()
    assert [e["remaining"] for _, e in lagging.events if e["type"] == "offer.stock"] == [1]
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds == [("offer.stock", 1), ("offer.stock", 0), ("offer.ended", 0)]


async def test_a_figure_of_zero_read_later_leaves_the_end_to_the_claim_that_sold_the_last_unit(
    shop: Shop,
) -> None:
    """This process's coalesced figure reads 0 while the last unit's seller is still telling
    "1 left" (slowly): ended from here, the room would drop that 1."""
    _, left_one = other_process(shop, events=RecordingEvents())  # its "1 left" is never heard
    held = HeldCalls(shop.orders_store)
    slow = SlowPublish(shop.events, delay=0.8)
    _, sells_last = other_process(
        shop, orders=cast(OrderStore, held), events=cast(RecordingEvents, slow)
    )
    offer = await shop.launch(quantity=4, limit=1)
    await shop.claim(offer, buyer(1), "k")  # 3 left: told at once, the gate taken
    await asyncio.sleep(0.05)
    await shop.claim(offer, buyer(2), "k")  # 2 left: to be told a period later
    await left_one.claim(offer.id, buyer(3), quantity=1, idempotency_key="k", address=ADDRESS)
    last = asyncio.create_task(
        sells_last.claim(offer.id, buyer(4), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await asyncio.wait_for(held.entered.wait(), 2)  # reserved; its order is being written
    await asyncio.sleep(STOCK_ANNOUNCE_SECONDS + 0.1)  # this process's figure: 0, read now
    held.gate.set()
    await last
    await asyncio.sleep(3 * 0.8)  # the seller's three slow publishes
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds == [
        ("offer.stock", 3),
        ("offer.stock", 1),
        ("offer.stock", 0),
        ("offer.ended", 0),
    ]


async def test_an_offer_of_one_unit_goes_straight_to_sold_out(shop: Shop) -> None:
    offer = await shop.launch(quantity=1, limit=1)  # it started with 1: nothing to tell
    await shop.claim(offer, buyer(1), "k")
    await settle()
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds == [("offer.stock", 0), ("offer.ended", 0)]


async def test_a_change_made_while_its_figure_is_on_the_way_is_announced_too(shop: Shop) -> None:
    slow = SlowReads(shop.stock)
    other = second_process(shop, stock=cast(StockReservations, slow))
    offer = await shop.launch(quantity=10, limit=1)
    slow.delay = 0.1
    await other.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)  # 9 is read and on its way
    await other.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(2 * STOCK_ANNOUNCE_SECONDS + 0.3)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [9, 8]


async def test_a_figure_overtaken_by_a_newer_one_is_not_told_after_it(shop: Shop) -> None:
    # A slow process reads 9 and sends it late; meanwhile this one reads 8 and tells it: the
    # room must not go back to 9 (and stay there: neither process has a change left to tell).
    slow = SlowPublish(shop.events, delay=3 * STOCK_ANNOUNCE_SECONDS)
    _, late = other_process(shop, events=cast(RecordingEvents, slow))
    offer = await shop.launch(quantity=10, limit=1)
    await late.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)  # 9 is read, the gate taken, and the figure on its slow way
    await shop.claim(offer, buyer(2), "k")  # 8: told when the gate's period is over
    await asyncio.sleep(4 * STOCK_ANNOUNCE_SECONDS)
    figures = shop.events.of_type("offer.stock")
    assert [event["remaining"] for event in figures] == [8]
    assert figures[0]["stock_version"] == (await shop.stock.figure(offer.id)).version


async def test_the_end_is_told_even_when_its_stock_figure_cannot_be(shop: Shop) -> None:
    publish = shop.events.publish_room_event

    async def refusing_stock(room_id: str, event: dict[str, Any], **fence: Any) -> int:
        if event["type"] == "offer.stock":
            raise Unavailable("live events are unavailable, try again")
        return await publish(room_id, event, **fence)

    shop.events.publish_room_event = refusing_stock  # type: ignore[method-assign]
    offer = await shop.launch(quantity=1, limit=1)
    await shop.claim(offer, buyer(1), "k")
    await asyncio.sleep(0.05)
    ended = shop.events.of_type("offer.ended")
    assert ended == [
        {"type": "offer.ended", "offer_id": offer.id, "reason": "sold_out", "remaining": 0}
    ]


async def test_a_change_as_an_announcement_returns_is_announced_too(shop: Shop) -> None:
    offer = await shop.launch(quantity=10, limit=5)
    await shop.claim(offer, buyer(1), "k")  # 9, at once
    await asyncio.sleep(STOCK_ANNOUNCE_SECONDS + 0.05)
    publish = shop.events.publish_room_event
    last_figure_out = asyncio.Event()

    async def publish_then_note(room_id: str, event: dict[str, Any], **fence: Any) -> int:
        seq = await publish(room_id, event, **fence)
        if event.get("remaining") == 8:
            last_figure_out.set()
        return seq

    shop.events.publish_room_event = publish_then_note  # type: ignore[method-assign]
    await shop.claim(offer, buyer(2), "k")  # 8: its announcement reads and publishes
    await last_figure_out.wait()
    # The announcement has returned; its done callback has not run yet. A reservation's answer
    # lands in this same pass, and the claim tells the offers so, as OrderService.claim does.
    reserved = await shop.stock.claim(offer.id, "buyer-3", 1, "buyer-3:k", shop.clock())
    shop.offers.stock_moved(offer, reserved.figure())
    await asyncio.sleep(2 * STOCK_ANNOUNCE_SECONDS + 0.1)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [9, 8, 7]


async def test_the_end_is_told_even_when_the_stock_cannot_be_stopped(shop: Shop) -> None:
    async def failing_stop(offer_id: str, *, sold_out: bool = False) -> bool:
        raise Unavailable("the reservation store is away")

    shop.stock.stop = failing_stop  # type: ignore[method-assign]
    offer = await shop.launch(quantity=1, limit=1)
    await shop.claim(offer, buyer(1), "k")
    await asyncio.sleep(0.05)
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    ended = shop.events.of_type("offer.ended")
    assert ended == [{"type": "offer.ended", "offer_id": offer.id, "reason": "sold_out"}]


async def test_close_stops_waiting_announcements_but_lets_an_end_be_told(shop: Shop) -> None:
    going_on, stop = asyncio.Event(), shop.stock.stop

    async def slow_stop(offer_id: str, *, sold_out: bool = False) -> int | None:
        await going_on.wait()
        return await stop(offer_id, sold_out=sold_out)

    shop.stock.stop = slow_stop  # type: ignore[method-assign]
    waiting = await shop.launch(quantity=10, limit=1)
    await shop.claim(waiting, buyer(1), "k")  # 9, at once
    await asyncio.sleep(0.01)
    await shop.claim(waiting, buyer(2), "k")  # 8, waits for the next period
    selling_out = await shop.launch(quantity=1, limit=1)
    await shop.claim(selling_out, buyer(3), "k")
    await asyncio.sleep(0.05)  # its end is recorded; the stock is being stopped
    closing = asyncio.create_task(shop.offers.close())
    await asyncio.sleep(0.05)
    going_on.set()
    await closing
    await shop.claim(waiting, buyer(4), "k")  # after close: no announcement
    await settle()
    figures = [(e["offer_id"], e["remaining"]) for e in shop.events.of_type("offer.stock")]
    assert figures == [(waiting.id, 9), (selling_out.id, 0)]
    assert [e["offer_id"] for e in shop.events.of_type("offer.ended")] == [selling_out.id]


async def test_a_sell_out_just_before_shutdown_still_ends_the_offer(shop: Shop) -> None:
    slow = SlowReads(shop.stock)
    closing_offers, closing_orders = other_process(shop, stock=cast(StockReservations, slow))
    offer = await shop.launch(quantity=1, limit=1)
    slow.delay = 0.05  # the sold-out announcement is still reading its 0 when close() comes
    await closing_orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.01)
    await closing_offers.close()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    assert len(shop.events.of_type("offer.ended")) == 1


class GateCounter:
    """Room events whose gate this process keeps losing; counts its tries."""

    def __init__(self, shop: Shop) -> None:
        self._shop, self.tries = shop, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shop.events, name)

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        self.tries += 1
        return False  # another process wins it every period


async def test_a_process_that_keeps_losing_the_gate_still_tells_its_change(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stock_announcer, "GATE_TRIES", 3)
    gate = GateCounter(shop)
    _, loser = other_process(shop, events=cast(RecordingEvents, gate))
    offer = await shop.launch(quantity=10, limit=1)
    await loser.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(3 * STOCK_ANNOUNCE_SECONDS + 0.2)
    assert gate.tries == 3
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [9]


async def test_an_announcement_that_fails_unexpectedly_is_logged(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(offer_id: str) -> StockFigure:
        raise ConnectionError("the reservation store went away")  # not a LiveshopError

    offer = await shop.launch(quantity=5, limit=1)
    shop.stock.figure = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="liveshop.offers"):
        await shop.claim(offer, buyer(1), "k")
        await asyncio.sleep(0.05)
    assert [record.getMessage() for record in caplog.records] == ["offer_announce_failed"]


async def test_close_does_not_wait_out_a_gate_it_keeps_losing(shop: Shop) -> None:
    gate = GateCounter(shop)
    offers, orders = other_process(shop, events=cast(RecordingEvents, gate))
    offer = await shop.launch(quantity=2, limit=2)
    await orders.claim(offer.id, buyer(1), quantity=2, idempotency_key="k", address=ADDRESS)
    # Sold out, and the units come back before its announcement reads them: it waits for the
    # gate, which another process keeps.
    await shop.stock.release(offer.id, "buyer-1:k")
    await asyncio.sleep(0.05)
    assert gate.tries == 1
    # Twenty lost periods would be 10 s; closing waits for the current one at most.
    await asyncio.wait_for(offers.close(), timeout=3 * STOCK_ANNOUNCE_SECONDS)


async def test_offers_whose_stock_is_quiet_are_forgotten(shop: Shop) -> None:
    # Another process ends the offers (here: none ends them at all); this one must not keep
    # their cadence for good.
    def end_sold_out(offer: FlashOffer) -> Awaitable[object]:
        return shop.offers.end(offer, EndReason.SOLD_OUT)

    announcer = StockAnnouncer(shop.stock, shop.events, shop.clock, end_sold_out)
    offers = [await shop.launch(quantity=3, limit=1) for _ in range(3)]
    for offer in offers:
        await shop.claim(offer, buyer(1), f"k-{offer.id}")
        announcer.stock_moved(offer, await shop.stock.figure(offer.id))
    announcer.forget_quiet()  # each announcement still waiting: kept
    assert announcer.remembered() == 3
    await settle()  # told, a period ago
    await asyncio.sleep(STOCK_ANNOUNCE_SECONDS)
    announcer.forget_quiet()
    assert announcer.remembered() == 0
    announcer.stock_moved(offers[0], StockFigure(1, None))
    assert announcer.remembered() == 1
    await announcer.close()


async def test_the_last_unit_is_told_first_when_its_order_is_written_last(shop: Shop) -> None:
    offer = await shop.launch(quantity=2, limit=1)
    slow = HeldCalls(shop.orders_store)
    _, orders = other_process(shop, orders=cast(OrderStore, slow))
    leaves_one = asyncio.create_task(
        orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="x", address=ADDRESS)
    )
    await slow.entered.wait()  # its order is being written, slowly
    # The other unit, through this process's own order store: written at once, and sold out.
    await shop.claim(offer, buyer(2), "y")
    await asyncio.sleep(0.05)
    slow.gate.set()
    await leaves_one
    await settle()
    assert [e["remaining"] for e in shop.events.of_type("offer.stock")] == [1, 0]
