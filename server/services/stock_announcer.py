"""An offer's stock, told to its room: coalesced to one cadence for the room, whatever the
number of processes claiming for it, but the last unit and sold out told at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from server.background import BackgroundTasks
from server.domain.errors import LiveshopError, OfferPaused
from server.domain.offers import SKEW_MARGIN, FlashOffer, StockFigure
from server.ports import RoomEvents
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.offers")

# How often the room hears that an offer's stock moved, whatever the number of processes
# claiming for it (but see stock_moved). Every announcement is a frame to every viewer
# (~15 us of server CPU each on the bench machine): twice a second keeps a counter lively, while
# four times a second in a room of 10,000 would be 40,000 frames/s, over half a core.
STOCK_ANNOUNCE_SECONDS = 0.5
# A process that keeps losing the gate to others announces anyway, past the gate, after this
# many periods, rather than lose its change.
GATE_TRIES = 20
# How long the room-wide mark that "1 left" was told outlives the offer's end.
LAST_UNIT_MARK_SECONDS = 3600.0
# How long a sold-out end waits for the "1 left" on its way (a few Redis round trips).
LAST_UNIT_WAIT_SECONDS = 2.0
# How long the claim that took the last unit waits for the orders of reservations still without
# one (other claims finishing, on other processes too: milliseconds, a second or so in a crowded
# burst) before it leaves the end to housekeeping: their claimer may have died, and the reaper
# would give their units back to sell. Checked every ORDERS_POLL_SECONDS.
LAST_ORDERS_WAIT_SECONDS = 2.0
ORDERS_POLL_SECONDS = 0.05


class StockAnnouncer:
    def __init__(
        self,
        stock: StockReservations,
        events: RoomEvents,
        clock: Callable[[], datetime],
        end_sold_out: Callable[[FlashOffer], Awaitable[object]],
    ) -> None:
        self._stock = stock
        self._events = events
        self._clock = clock
        self._end_sold_out_offer = end_sold_out
        # Per offer, on the monotonic clock: the last stock change made here, and when this
        # process last told the room the offer's stock (see forget_quiet).
        self._changed_at: dict[str, float] = {}
        self._announced_at: dict[str, float] = {}
        self._last_unit: dict[str, asyncio.Task[None]] = {}  # "1 left" on its way
        self._told_last_unit: set[str] = set()  # offers whose "1 left" this process told
        self._announcing: dict[str, asyncio.Task[None]] = {}  # the coalesced one per offer
        self._announcements = BackgroundTasks(log, "offer_announce_failed")  # every one
        self._closed = False

    def stock_moved(self, offer: FlashOffer, figure: StockFigure | None) -> None:
        """A claim or a release changed the stock (`figure`: as a claim here left it, when it
        knows): tell the room soon. Past the cadence, at once: the last unit (the moment
        viewers rush for, and the figure a coalesced announcement would most often skip), and
        sold out (once: by the process that ends the offer, right before `offer.ended`)."""
        if self._closed or offer.end_reason is not None:
            return  # shutting down, or the room has heard the end
        self._changed_at[offer.id] = time.monotonic()
        remaining = None if figure is None else figure.remaining
        if figure is not None and remaining == 1:
            # As this claim left it, not read again: the next claim may sell it first, and the
            # room would go from more than one to sold out without hearing of the last unit.
            self._tell_last_unit(offer, figure)
            return
        if remaining == 0:
            task = self._spawn_announce(offer, delay=0.0, at_once=True)
            self._announcements.finish_on_close(task)  # see _end_sold_out
            return
        if self._announcement_waiting(offer.id):
            return  # it will read the latest figure, or go round again for it
        since = time.monotonic() - self._announced_at.get(offer.id, 0.0)
        self._spawn_announce(offer, delay=max(0.0, STOCK_ANNOUNCE_SECONDS - since))

    def last_unit_taken(self, offer: FlashOffer, taken_at: int | None) -> None:
        """A claim here took the last unit, alone, making the stock's version `taken_at`. The
        claim that left it may have been another process's, whose "1 left" can reach the room
        after the end, which drops it: unless the room has heard it (the mark that process
        sets once it has published), this process tells it, before sold out, as the version
        before its own. (Nothing to tell of an offer of one unit.)"""
        if self._closed or offer.quantity == 1 or offer.id in self._told_last_unit:
            return
        self._changed_at[offer.id] = time.monotonic()
        left = StockFigure(1, None if taken_at is None else taken_at - 1)
        self._tell_last_unit(offer, left, unless_marked=True)

    def _tell_last_unit(
        self, offer: FlashOffer, figure: StockFigure, *, unless_marked: bool = False
    ) -> None:
        self._told_last_unit.add(offer.id)
        task = self._announcements.spawn(self._announce_last_unit(offer, figure, unless_marked))
        self._last_unit[offer.id] = task  # the sold-out end waits for it (last_unit_told)
        task.add_done_callback(lambda _: self._forget_last_unit(offer.id, task))

    def _announcement_waiting(self, offer_id: str) -> bool:
        # A task that has returned is forgotten only by its done callback, one loop pass later:
        # a change made in between must not count on it.
        task = self._announcing.get(offer_id)
        return task is not None and not task.done()

    def _spawn_announce(
        self, offer: FlashOffer, delay: float, *, at_once: bool = False
    ) -> asyncio.Task[None]:
        task = self._announcements.spawn(self._announce(offer, delay, at_once=at_once))
        if not self._announcement_waiting(offer.id):
            self._announcing[offer.id] = task
        task.add_done_callback(lambda _: self._forget_announce(offer.id, task))
        return task

    def _forget_announce(self, offer_id: str, task: asyncio.Task[None]) -> None:
        if self._announcing.get(offer_id) is task:
            del self._announcing[offer_id]

    async def close(self) -> None:
        """Stop the announcements on their way (shutdown): one may wait several periods for
        the gate, and the room's events are about to close. An offer ending meanwhile still
        tells the room (see OfferService.end)."""
        self._closed = True
        await self._announcements.close()

    def forget(self, offer_id: str) -> None:
        """The offer has ended: nothing more to announce for it."""
        self._changed_at.pop(offer_id, None)
        self._announced_at.pop(offer_id, None)
        self._told_last_unit.discard(offer_id)

    def remembered(self) -> int:
        """How many offers' cadence this process keeps."""
        return len(self._changed_at.keys() | self._announced_at.keys())

    def forget_quiet(self) -> None:
        """Forget the offers whose stock has not moved here for a period, with no announcement
        waiting: they no longer bear on the cadence. An offer ended by another process, or
        one this process stopped claiming for, would otherwise be remembered for good."""
        horizon = time.monotonic() - STOCK_ANNOUNCE_SECONDS
        for offer_id in [*self._changed_at.keys() | self._announced_at.keys()]:
            last = max(self._changed_at.get(offer_id, 0.0), self._announced_at.get(offer_id, 0.0))
            if last < horizon and not self._announcement_waiting(offer_id):
                self.forget(offer_id)

    def _forget_last_unit(self, offer_id: str, task: asyncio.Task[None]) -> None:
        if self._last_unit.get(offer_id) is task:
            del self._last_unit[offer_id]

    async def _announce_last_unit(
        self, offer: FlashOffer, figure: StockFigure, unless_marked: bool
    ) -> None:
        room, mark, marked_for = offer.room_id, f"last-unit:{offer.id}", self._mark_seconds(offer)
        try:
            # The mark is taken once the figure is published: a process that finds it taken
            # knows the room has heard it, before the end. Between the two, both may tell it.
            if unless_marked and not await self._events.try_gate(room, mark, marked_for):
                return
            # Past the cadence; the gate is taken all the same where it is free, so the next
            # figure waits its period.
            await self._events.try_gate(room, f"stock:{offer.id}", STOCK_ANNOUNCE_SECONDS)
            self._announced_at[offer.id] = time.monotonic()
            await self._publish_stock(offer, figure)
            if not unless_marked:
                await self._events.try_gate(room, mark, marked_for)
        except LiveshopError as error:
            log.warning("offer_announce_failed", extra={"offer_id": offer.id, "code": error.code})

    async def _announce(self, offer: FlashOffer, delay: float, *, at_once: bool) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            while await self._announce_once(offer, at_once=at_once):
                # The stock moved here while that figure was on its way: the room hears the
                # newer one a period later, as stock_moved would have had it.
                at_once = False
                await asyncio.sleep(STOCK_ANNOUNCE_SECONDS)
        except LiveshopError as error:
            log.warning("offer_announce_failed", extra={"offer_id": offer.id, "code": error.code})

    def _mark_seconds(self, offer: FlashOffer) -> float:
        """How long the "1 left" mark lasts: past the offer's end by time, which no sale
        outlives."""
        left = (offer.ends_at - self._clock()).total_seconds()
        return max(left, 0.0) + LAST_UNIT_MARK_SECONDS

    async def _announce_once(self, offer: FlashOffer, *, at_once: bool) -> bool:
        """Tell the room the offer's stock; True when it moved here after the figure was read.

        Room-wide, not per process: every process claiming for this offer shares one cadence.
        A process that loses the gate may hold a change the winner read too early, so it tries
        again each period (GATE_TRIES at most) to announce the stock itself. Meanwhile its own
        later changes wait for this announcement, as for any."""
        gate = f"stock:{offer.id}"
        tries = 0
        while True:
            read_at = time.monotonic()
            figure = await self._stock.figure(offer.id)
            remaining = figure.remaining
            if remaining == 0:
                if not at_once:
                    # A figure read later, or by another process, leaves the end to the claim
                    # that took the last unit (housekeeping ends it a round later, should it
                    # not), lest it overtake the seller's "1 left".
                    return False
                if await self._every_reservation_ordered(offer):
                    # This process's claim took the last unit: it ends the offer, after its
                    # "1 left".
                    await self._end_sold_out(offer)
                    return False
                # A reservation still has no order: its claimer may have died, and then the
                # reaper gives its units back to sell. The room hears 0 now, after the "1 left";
                # housekeeping ends the offer once every reservation has its order
                # (OfferService.end_sold_out), and the end says 0 again.
                await self.last_unit_told(offer.id)
                await self._events.try_gate(offer.room_id, gate, STOCK_ANNOUNCE_SECONDS)
                break
            if at_once and remaining == 1:
                # Sold out a moment ago, and a unit came back since: the last unit, at once.
                # Past the cadence; the gate is taken all the same where it is free, so the
                # next figure waits its period.
                await self._events.try_gate(offer.room_id, gate, STOCK_ANNOUNCE_SECONDS)
                break
            if await self._events.try_gate(offer.room_id, gate, STOCK_ANNOUNCE_SECONDS):
                break
            if self._clock() >= offer.ends_at or self._closed:
                return False  # an offer over by time ends on its own; at shutdown, others tell
            tries += 1
            if tries == GATE_TRIES:
                # Others kept the cadence all this while, but may all have read before this
                # process's last change: say it once, past the gate, rather than lose it.
                break
            await asyncio.sleep(STOCK_ANNOUNCE_SECONDS)
        self._announced_at[offer.id] = time.monotonic()
        await self._publish_stock(offer, figure)
        return self._changed_at.get(offer.id, 0.0) > read_at

    async def _every_reservation_ordered(self, offer: FlashOffer) -> bool:
        """Whether every reservation of the offer has its order, or has by LAST_ORDERS_WAIT_SECONDS
        from now."""
        deadline = time.monotonic() + LAST_ORDERS_WAIT_SECONDS
        while await self._stock.pending_without_order(offer.id, self._clock() + SKEW_MARGIN):
            if time.monotonic() >= deadline or self._closed:
                return False
            await asyncio.sleep(ORDERS_POLL_SECONDS)
        return True

    async def _end_sold_out(self, offer: FlashOffer) -> None:
        """End the offer, which tells the room, once. Not cut short by close(): once the end
        may be recorded, only this process can tell the room. (Should this process die
        first, end_sold_out in another process's housekeeping ends it.)"""
        task = asyncio.current_task()
        if task is not None:
            self._announcements.finish_on_close(task)
        await self._end_sold_out_offer(offer)

    async def last_unit_told(self, offer_id: str) -> None:
        """Wait for the "1 left" this process is telling, if any: the sold-out figure and the
        end come after it (claims sold the last two units together, or the last one alone).
        Not for long: a figure stuck on a failing Redis must not hold up the end."""
        last_unit = self._last_unit.get(offer_id)
        if last_unit is not None:
            await asyncio.wait({last_unit}, timeout=LAST_UNIT_WAIT_SECONDS)

    async def tell_sold_out(self, offer: FlashOffer) -> None:
        """0, right before `offer.ended` (sold out), once like the end. Its stock is stopped,
        which raised the version above every figure read before: this one is told last."""
        try:
            version = (await self._stock.figure(offer.id)).version
        except OfferPaused:  # lost at the end: told all the same, unordered
            version = None
        await self._publish_stock(offer, StockFigure(0, version))

    async def _publish_stock(self, offer: FlashOffer, figure: StockFigure) -> None:
        """The figure, unless the room has heard one of a version as high (a process that read
        earlier, or told the same one): its topic in the room's stream keeps them in order."""
        await self._events.publish_room_event(
            offer.room_id,
            {
                "type": "offer.stock",
                "offer_id": offer.id,
                "remaining": figure.remaining,
                "stock_version": figure.version,
            },
            topic=offer.id,
            order=figure.version,
        )
