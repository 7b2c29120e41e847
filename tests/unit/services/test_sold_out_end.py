"""Who ends a sold-out offer, and when: the claim that sold the last unit, at once and after its
"1 left"; housekeeping a round later when that claim did not (its process failed, Redis lost
the offer); a claim sent again after its first attempt failed. The room always hears 1, then
0, then the end; and a unit given back before the end keeps the offer running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from server.domain.errors import Conflict, Unavailable, Unresponsive
from server.domain.offers import EndReason, FlashOffer
from server.ports import OrderStore
from server.services.housekeeping import Housekeeper
from server.stock_port import StockReservations
from tests.fakes import RecordingEvents
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    HeldCalls,
    Shop,
    buyer,
    other_process,
    settle,
)


def told(shop: Shop) -> list[tuple[str, int | None]]:
    return [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]


ONE_ZERO_END = [("offer.stock", 1), ("offer.stock", 0), ("offer.ended", 0)]


class Relay:
    """What another process reaches (the stock, the room's events): the shared one, with the
    calls a subclass overrides behaving differently."""

    def __init__(self, shared: Any) -> None:
        self._shared = shared

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)


class SlowStockGate(Relay):
    """The room's events as a process reaches them whose cadence gate is slow to answer (a busy
    Redis): its "1 left" takes that long to go out."""

    def __init__(self, shared: RecordingEvents, delay: float) -> None:
        super().__init__(shared)
        self.delay = delay

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        if name.startswith("stock:"):
            await asyncio.sleep(self.delay)
        result: bool = await self._shared.try_gate(room_id, name, seconds)
        return result


async def test_the_end_waits_for_the_last_unit_its_own_process_is_telling(shop: Shop) -> None:
    slow = cast(RecordingEvents, SlowStockGate(shop.events, 0.3))
    _, orders = other_process(shop, events=slow)
    offer = await shop.launch(quantity=2, limit=1)
    await asyncio.gather(
        *(
            orders.claim(offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS)
            for n in range(2)
        )
    )
    await asyncio.sleep(1.0)
    assert told(shop) == ONE_ZERO_END


async def test_housekeeping_leaves_the_seller_a_round_to_end_its_offer(shop: Shop) -> None:
    """Another process's housekeeping finds the offer sold out while the seller's "1 left" is
    on its slow way: ended at once, the room would never hear that 1."""
    _, left_one = other_process(shop, events=RecordingEvents())  # its "1 left" is never heard
    _, seller = other_process(shop, events=cast(RecordingEvents, SlowStockGate(shop.events, 0.3)))
    offer = await shop.launch(quantity=2, limit=1)
    await left_one.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await seller.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    keeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    await asyncio.sleep(1.0)
    assert told(shop) == ONE_ZERO_END
    await keeper.run_once()  # the seller ended it: nothing more
    assert told(shop) == ONE_ZERO_END


class LosesTheOfferAfterAttach(Relay):
    """Redis restarts without its data right after the last order is attached."""

    async def attach_order(self, offer_id: str, *args: Any, **kwargs: Any) -> Any:
        attached = await self._shared.attach_order(offer_id, *args, **kwargs)
        self._shared.forget(offer_id)
        return attached


async def test_housekeeping_rebuilds_an_offer_redis_lost_and_ends_it(shop: Shop) -> None:
    offer = await shop.launch(quantity=1, limit=1)
    losing = cast(StockReservations, LosesTheOfferAfterAttach(shop.stock))
    _, orders = other_process(shop, stock=losing)
    await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await settle()
    assert (await shop.offers_store.get(offer.id)).end_reason is None  # its end read nothing
    keeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    for _ in range(3):  # rebuilt, found sold out, ended
        await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    assert await shop.stock.remaining(offer.id) == 0  # rebuilt from its one order


class AttachFailsOnce(Relay):
    def __init__(self, shared: Any) -> None:
        super().__init__(shared)
        self.failed = False

    async def attach_order(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise Unavailable("live data is unreachable, try again")
        return await self._shared.attach_order(*args, **kwargs)


async def test_a_last_unit_whose_claim_failed_is_ended_once_its_retry_attached_it(
    shop: Shop,
) -> None:
    """The claim that sold out wrote its order and failed to attach it: it ended nothing. Its
    retry, answered by the stock's current figure, cannot tell that it sold the last unit (it
    must not overtake another seller's "1 left"): housekeeping ends the offer."""
    offer = await shop.launch(quantity=1, limit=1)
    _, orders = other_process(shop, stock=cast(StockReservations, AttachFailsOnce(shop.stock)))
    with pytest.raises(Unavailable):  # the order is written; its attach failed
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    keeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    await keeper.run_once()
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is None  # its order unattached
    _order, created = await orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    assert not created
    await keeper.run_once()
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    assert told(shop) == [("offer.stock", 0), ("offer.ended", 0)]


class GivenBackFirst(Relay):
    """The stock as the seller's end reaches it: a buyer's cancel lands just before, after the
    seller read 0 left (a few milliseconds apart, on two processes)."""

    def __init__(self, shared: Any, first: Callable[[], Awaitable[object]]) -> None:
        super().__init__(shared)
        self._first: Callable[[], Awaitable[object]] | None = first

    async def stop_if_sold_out(self, offer_id: str) -> bool:
        if self._first is not None:
            first, self._first = self._first, None
            await first()
        stopped: bool = await self._shared.stop_if_sold_out(offer_id)
        return stopped


async def test_a_unit_given_back_before_the_end_keeps_the_offer_running(shop: Shop) -> None:
    offer = await shop.launch(quantity=2, limit=1)
    first, _ = await shop.claim(offer, buyer(1), "k")
    stock = GivenBackFirst(shop.stock, lambda: shop.orders.cancel(first.id, buyer(1)))
    _, seller = other_process(shop, stock=cast(StockReservations, stock))
    await seller.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await settle()
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    assert await shop.stock.remaining(offer.id) == 1
    assert "offer.ended" not in {kind for kind, _ in told(shop)}
    assert told(shop)[-1] == ("offer.stock", 1)  # the unit that came back, offered again
    await shop.claim(offer, buyer(3), "k")
    await settle()
    ended = await shop.offers_store.get(offer.id)
    assert (ended.end_reason, ended.taken_at_end) == (EndReason.SOLD_OUT, 2)
    assert told(shop)[-2:] == [("offer.stock", 0), ("offer.ended", 0)]


class CannotStopAtTheEnd(Relay):
    """A seller whose Redis fails as it ends the offer it sold out: housekeeping's to end."""

    async def stop_if_sold_out(self, offer_id: str) -> bool:
        raise Unavailable("live data is unreachable, try again")


async def test_housekeeping_ends_an_offer_that_sold_out_again_after_a_unit_came_back(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=1, limit=1)
    _, seller = other_process(shop, stock=cast(StockReservations, CannotStopAtTheEnd(shop.stock)))
    first, _ = await seller.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    await settle()
    back = GivenBackFirst(shop.stock, lambda: shop.orders.cancel(first.id, buyer(1)))
    offers, orders = other_process(shop, stock=cast(StockReservations, back))
    keeper = Housekeeper(offers, orders, lambda: [offer.id])
    await keeper.run_once()
    await keeper.run_once()  # about to end it, and the unit came back: it goes on
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    await seller.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await settle()
    await keeper.run_once()
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT


class LosesTheOfferAsItSellsOut(Relay):
    """Redis restarts without its data just after the seller's sold-out stop, and another
    process rebuilds the offer from the orders before the seller records the end."""

    def __init__(self, shared: Any, rebuild: Callable[[], Awaitable[None]]) -> None:
        super().__init__(shared)
        self._rebuild: Callable[[], Awaitable[None]] | None = rebuild

    async def stop_if_sold_out(self, offer_id: str) -> bool:
        stopped: bool = await self._shared.stop_if_sold_out(offer_id)
        if self._rebuild is not None:
            rebuild, self._rebuild = self._rebuild, None
            self._shared.flush()
            await rebuild()
        return stopped


async def test_an_offer_that_sold_out_stays_sold_out_in_a_stock_rebuilt_before_its_end(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=2, limit=1)
    first, _ = await shop.claim(offer, buyer(1), "k")
    rebuilder, _ = other_process(shop)
    losing = LosesTheOfferAsItSellsOut(shop.stock, lambda: rebuilder.rebuild(offer.id))
    _, seller = other_process(shop, stock=cast(StockReservations, losing))
    await seller.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await settle()
    ended = await shop.offers_store.get(offer.id)
    assert (ended.end_reason, ended.taken_at_end) == (EndReason.SOLD_OUT, 2)
    await shop.orders.cancel(first.id, buyer(1))
    assert await shop.stock.remaining(offer.id) == 0  # its unit goes to the product
    with pytest.raises(Conflict) as late:
        await shop.claim(offer, buyer(3), "k")
    assert late.value.code == "sold_out"


@contextlib.asynccontextmanager
async def sold_out_with_an_order_on_its_way(shop: Shop, offer: FlashOffer) -> AsyncIterator[None]:
    """Within: the offer of 2 sold out, its end held back by the first unit's order, on its
    way in another process. After: that order written, the room must have heard the offer
    sell out (1, 0, then its end)."""
    writes = HeldCalls(shop.orders_store)
    _, slow_writer = other_process(shop, orders=cast(OrderStore, writes))
    first = asyncio.create_task(
        slow_writer.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await writes.entered.wait()  # reserved, its order on its way
    await shop.claim(offer, buyer(2), "k")  # the last unit: its end waits for that order
    yield
    writes.gate.set()
    await first
    await settle()
    assert told(shop) == ONE_ZERO_END
    assert [e["reason"] for e in shop.events.of_type("offer.ended")] == ["sold_out"]


async def test_an_offer_that_sold_out_before_its_time_was_up_ends_sold_out(shop: Shop) -> None:
    """Its last unit sold in its last second, its end held back by another reservation's order
    on its way: the end by time came first, and recorded it `expired`, with no 0 told."""
    offer = await shop.launch(quantity=2, limit=1, duration=60)
    shop.clock.advance(seconds=59.5)
    async with sold_out_with_an_order_on_its_way(shop, offer):
        shop.clock.advance(seconds=0.6)
        await Housekeeper(shop.offers, shop.orders, lambda: [offer.id]).run_once()
        ended = await shop.offers_store.get(offer.id)
        assert (ended.end_reason, ended.ended_at) == (EndReason.SOLD_OUT, offer.ends_at)


async def test_a_stop_that_lands_as_the_offer_sells_out_ends_it_sold_out(shop: Shop) -> None:
    """The host's stop came first: the offer sold out, and the room hears so, not that it was
    stopped with nothing left."""
    offer = await shop.launch(quantity=2, limit=1, duration=60)
    async with sold_out_with_an_order_on_its_way(shop, offer):
        stopped = await shop.offers.stop(offer.id, HOST)
        assert stopped.end_reason is EndReason.SOLD_OUT


async def test_a_stop_with_a_unit_left_ends_it_stopped(shop: Shop) -> None:
    offer = await shop.launch(quantity=2, limit=1, duration=60)
    await shop.claim(offer, buyer(1), "k")
    stopped = await shop.offers.stop(offer.id, HOST)
    assert stopped.end_reason is EndReason.STOPPED
    await settle()
    assert shop.events.of_type("offer.ended")[-1]["remaining"] == 1


async def test_a_sold_out_offer_nobody_serves_is_ended_by_housekeeping_in_turn(
    shop: Shop,
) -> None:
    """Its seller (HTTP claims, no socket in the room) died after writing the last order and
    before ending it; no other process has a viewer of the room or took a claim for it, so
    none looked at it: it ran at 0 until its time was up, a day at most, then `expired`."""
    offer = await shop.launch(quantity=2, limit=1, duration=3600)
    seller_offers, seller = other_process(shop)
    # Dies right after writing the last order: nothing it meant to do next happens.
    seller_offers.stock_moved = lambda *args: None  # type: ignore[method-assign]
    seller_offers.last_unit_taken = lambda *args: None  # type: ignore[method-assign]
    for n in (1, 2):
        await seller.claim(offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS)
    serving_nothing = Housekeeper(shop.offers, shop.orders, lambda: [])
    for _ in range(2):  # found sold out, then ended a round later
        await serving_nothing.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT


async def test_an_offer_whose_time_is_up_with_a_unit_a_dead_claimer_held_expires(
    shop: Shop,
) -> None:
    """A reservation without an order for longer than a live claimer waits (ORPHAN_AFTER)
    will come back: the offer did not sell out, and ends `expired`."""
    offer = await shop.launch(quantity=2, limit=1, duration=60)
    await shop.claim(offer, buyer(1), "k")
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())  # then died
    shop.clock.advance(seconds=61)
    await Housekeeper(shop.offers, shop.orders, lambda: [offer.id]).run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.EXPIRED


class HungStock(Relay):
    """Reservations behind a Redis that hangs: each call runs out its deadline."""

    def __init__(self, shared: Any) -> None:
        super().__init__(shared)
        self.calls: list[str] = []
        self.hung = True

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._shared, name)

        async def hanging(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.hung:
                raise Unresponsive("live data did not answer in time")
            return await call(*args, **kwargs)

        return hanging


async def test_an_end_by_time_waits_on_a_hung_redis_once_and_is_finished_later(
    shop: Shop,
) -> None:
    """Asking whether the offer sold out, then stopping its stock, waited out the deadline
    twice an offer, every round."""
    offer = await shop.launch(quantity=2, limit=1, duration=60)
    hung = HungStock(shop.stock)
    offers, _ = other_process(shop, stock=cast(StockReservations, hung))
    shop.clock.advance(seconds=61)
    with pytest.raises(Unresponsive):
        await offers.end_due()
    assert hung.calls == ["pending_without_order"]
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.EXPIRED
    hung.hung = False
    await offers.finish_ends()  # its next round: at once
    assert [e["reason"] for e in shop.events.of_type("offer.ended")] == ["expired"]
