"""Flash offers: launch, stop, end exactly once (sold out, expired, stopped), and tell the room.
What a launch books of its product's stock is `bookings.py`'s.

Any process may end an offer by time: the store's compare-and-set lets exactly one of them
record the end and publish `offer.ended`, so the end happens even if the launching process died.
The stock figures the room hears on the way are `stock_announcer.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.commerce import offer_to_wire
from schemas.http import product_summary
from server.domain.errors import (
    Conflict,
    LaunchWithdrawn,
    LiveshopError,
    OfferPaused,
    Unavailable,
    Unresponsive,
)
from server.domain.identity import Identity, scoped_key
from server.domain.ids import new_id
from server.domain.money import Money
from server.domain.offers import (
    ORPHAN_AFTER,
    EndReason,
    FlashOffer,
    StockFigure,
    plan_offer,
    same_launch,
)
from server.domain.products import Product
from server.domain.rooms import RoomStatus, ensure_can_manage
from server.domain.times import iso_z, utc_now
from server.ports import OfferStore, OrderStore, ProductStore, RoomEvents, RoomStore
from server.services.bookings import ProductBookings
from server.services.load_once import CoalescedRuns
from server.services.offer_reads import OfferReads
from server.services.sold_out_ends import SoldOutEnds
from server.services.stock_announcer import StockAnnouncer
from server.services.stock_rebuilds import StockRebuilds
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.offers")

DUE_BATCH = 100
# How long an unfinished end is left to the process that recorded it, which may be stopping a
# stock or telling a room that is slow to answer (each bounded at 5 s), before another finishes it.
FINISH_GRACE = timedelta(seconds=15)
# How long an end waits for a rebuilt stock's check before it counts the units taken unknown.
CHECK_SECONDS = 2.0
# Likewise, how long a counted offer is left to its launch to tell the room of (a few bounded
# round trips) before any process tells it.
UNTOLD_AFTER = timedelta(seconds=15)
UNTOLD_BATCH = 100
# Running offers housekeeping takes in turn for their orphans (see Housekeeper): far more than
# run at once on the busiest days; beyond it, those ending last wait for a claim or settling.
RUNNING_OFFERS_READ = 5_000


@dataclass(frozen=True, slots=True)
class Launched:
    offer: FlashOffer
    stock: StockFigure | None  # as the launch answered; None while the stock is rebuilt
    created: bool  # False: the same launch, sent again


class OfferService(OfferReads):
    def __init__(
        self,
        offers: OfferStore,
        orders: OrderStore,
        rooms: RoomStore,
        products: ProductStore,
        stock: StockReservations,
        events: RoomEvents,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._offers = offers
        self._orders = orders
        self._rooms = rooms
        self._products = products
        self._stock = stock
        self._events = events
        self._clock = clock
        self._rebuilds = StockRebuilds(offers, orders, stock, clock)
        self._rebuilds_after_asking = CoalescedRuns(self._rebuilds.rebuild)
        self._announcer = StockAnnouncer(
            stock, events, clock, lambda offer: self.end(offer, EndReason.SOLD_OUT)
        )
        self._bookings = ProductBookings(offers, orders, products, stock, self._withdraw)
        self._sold_out_ends = SoldOutEnds(offers, stock, clock, end=self.end, rebuild=self.rebuild)
        self._unfinished_since: dict[str, datetime] = {}  # as finish_ends first saw them
        self._finish_round = 0  # finish_ends' rounds so far
        self._finish_failed_in: dict[str, int] = {}  # the round in which each end last failed

    async def launch(
        self,
        room_id: str,
        who: Identity,
        *,
        product_id: str,
        price: Money,
        quantity: int,
        per_user_limit: int,
        countdown_seconds: int,
        duration_seconds: int,
        idempotency_key: str | None = None,
    ) -> Launched:
        """The offer as it is now, and whether it is new. A launch sent again with the same
        idempotency key gets the offer the first one made (not new), and the room hears of it
        again: the first may have failed after storing it, before telling the room."""
        room = await self._rooms.get(room_id)
        ensure_can_manage(room, who)
        # Scoped to the launcher, as claims' keys are to their buyer.
        key = None if idempotency_key is None else scoped_key(who.user_id, idempotency_key)
        product = await self._products.get(product_id)
        duration = timedelta(seconds=duration_seconds)
        countdown = timedelta(seconds=countdown_seconds)
        offer = None if key is None else await self._offers.by_launch_key(room_id, key)
        created = False
        if offer is None:
            planned = plan_offer(
                offer_id=new_id("f"),
                room=room,
                product=product,
                price=price,
                quantity=quantity,
                per_user_limit=per_user_limit,
                now=self._clock(),
                duration=duration,
                countdown=countdown,
            )
            try:
                offer = await self._bookings.book(planned, product, key)
            except LaunchWithdrawn:
                await self._ensure_live(room_id, planned)  # the room's end stopped it, or...
                raise  # ...it ended otherwise: withdrawn by housekeeping, or out of time
            created = offer.id == planned.id  # else the same launch, sent twice, got in first
            if created:
                await self._ensure_live(room_id, offer)
        if not created and not same_launch(
            offer,
            product_id=product_id,
            price=price,
            quantity=quantity,
            per_user_limit=per_user_limit,
            duration=duration,
            countdown=countdown,
        ):
            raise Conflict(
                "this idempotency key launched another offer", code="idempotency_key_reused"
            )
        if not created and offer.end_reason is None and key is not None:
            # Most often the first answer was lost, and the offer sells; but the first attempt
            # may have died before counting it.
            await self._bookings.count_again(offer, key)
        # As it is now: the host may have stopped it, or the room's end, while this ran. Sent
        # again, a launch answers its offer whatever ended it since: it ran, and may have sold.
        # So is a new one that sold out, or ran out of time, before its launch could answer:
        # listed once counted, it may be claimed before the room hears of it.
        offer, figure = await self.view(offer.id)
        if offer.end_reason is EndReason.STOPPED and created:
            await self._ensure_live(room_id, offer)  # the room's end stopped it: room_not_live
            # Stopped before its launch could answer: by the room's end, which stops the offers
            # before it stores the room as ended. Its key goes, as a withdrawn launch's: sent
            # again, the launch finds the room ended, or launches afresh.
            await self._withdraw(offer)
            raise LaunchWithdrawn(
                "the offer was stopped before its launch finished: launch it again"
            )
        if offer.end_reason is None:
            # Sent again too: viewers take `offer.started` as the offer's state.
            await self._tell_started(offer, figure, product)
        return Launched(offer, figure, created)

    async def _tell_started(
        self, offer: FlashOffer, figure: StockFigure | None, product: Product
    ) -> None:
        """`offer.started`, on the offer's topic: once `offer.ended` has closed it, an
        announcement that read the offer running before its end is dropped."""
        await self._events.publish_room_event(
            offer.room_id,
            {
                "type": "offer.started",
                "offer": offer_to_wire(offer, figure),
                # What a pinned product shows: every viewer gets it, so not the whole product
                # (a description of up to 5,000 characters, the trade fields).
                "product": product_summary(product),
                "server_time": iso_z(self._clock()),
            },
            topic=offer.id,
        )
        await self._offers.launch_told(offer.id)

    async def tell_untold_launches(self) -> int:
        """Tell the rooms of the offers whose launch counted them but died before telling: they
        sell, and a process that served the room before would not show them (each process
        calls this once a second)."""
        untold = await self._offers.untold_launches(self._clock() - UNTOLD_AFTER, UNTOLD_BATCH)
        for offer in untold:
            gate = f"tell:{offer.id}"  # one process tells it (another, should that one fail)
            if not await self._events.try_gate(offer.room_id, gate, UNTOLD_AFTER.total_seconds()):
                continue
            offer, figure = await self.view(offer.id)
            if offer.end_reason is None:
                await self._tell_started(offer, figure, await self._products.get(offer.product_id))
                log.warning("offer_start_told_late", extra={"offer_id": offer.id})
        return len(untold)

    async def _ensure_live(self, room_id: str, launched: FlashOffer) -> None:
        if (await self._rooms.get(room_id)).status is not RoomStatus.LIVE:
            # The show ended while this launch ran, after its end stopped the room's offers
            # (see stop_offers_in_room): this one must not sell on.
            await self._withdraw(launched)
            raise Conflict("the room has ended", code="room_not_live")

    async def _withdraw(self, offer: FlashOffer, *, if_uncounted: bool = False) -> bool:
        """Stop an offer whose launch is refused after it was stored, and free its launch key
        in the same write, so the launch sent again with that key is tried afresh rather than
        answered with this stopped offer; with `if_uncounted`, only if its launch has not
        counted it. It books only what claims took meanwhile: mostly nothing, as the room is
        told of an offer once its launch succeeds. Whether this ended it."""
        stop = self.end(offer, EndReason.STOPPED, free_launch_key=True, if_uncounted=if_uncounted)
        return await stop is not None

    async def set_product_stock(self, who: Identity, product_id: str, stock: int) -> Product:
        """A restock or a count (ProductBookings.set_stock)."""
        return await self._bookings.set_stock(who, product_id, stock)

    async def withdraw_uncounted(self) -> int:
        """Withdraw the offers whose launch died before counting them (each process calls this
        once a second; ProductBookings.withdraw_uncounted)."""
        return await self._bookings.withdraw_uncounted(self._clock())

    async def stop_offers_in_room(self, room_id: str) -> None:
        """Stop every offer the room still runs (RoomService.end), all at once: each end is
        recorded before its stock is stopped, so should Redis fail, housekeeping finishes every
        one (one by one, the first failure left the later offers selling). Then finish the
        ends another process recorded and has yet to finish (a host's stop, an expiry, the
        room's end sent twice; that process slow, or dead): until then such an offer may take
        claims, and its room not have heard of its end, which must come before the room's.
        Finishing twice is harmless: stopping is idempotent, and the room's stream drops a
        second `offer.ended`."""
        running = await self._offers.open_in_room(room_id)
        await _all_of([self.end(offer, EndReason.STOPPED) for offer in running])
        unfinished = await self._offers.unfinished_ends(DUE_BATCH, room_id=room_id)
        await _all_of([self._finish_end(offer) for offer in unfinished])

    async def stop(self, offer_id: str, who: Identity) -> FlashOffer:
        offer = await self._offers.get(offer_id)
        ensure_can_manage(await self._rooms.get(offer.room_id), who)
        ended = await self.end(offer, EndReason.STOPPED)
        if ended is not None:
            return ended
        # Ended already, perhaps by an earlier attempt that failed after recording the end
        # (Redis away, the host heard 503): stop the stock and tell the room again. Stopping is
        # idempotent, and the room's stream drops an `offer.ended` that went out before (for as
        # long as it keeps the offer's closed topic: a day, unless Redis loses it).
        ended = await self._offers.get(offer_id)
        await self._finish_end(ended)
        return ended

    async def end(
        self,
        offer: FlashOffer,
        reason: EndReason,
        *,
        free_launch_key: bool = False,
        if_uncounted: bool = False,
    ) -> FlashOffer | None:
        """End the offer if nobody has yet; only the process that wins tells the room (see
        OfferStore.record_end for the options). None when another process ended it, or, for a
        sold-out end, when a unit has come back since the caller found none.

        `offer.ended` closes the offer's topic in the room's stream: a figure another process
        read earlier and sends late is dropped, so no stock figure follows the end.
        """
        stopped_by_host = reason is EndReason.STOPPED and not if_uncounted  # or the room's end
        if stopped_by_host and self._clock() >= offer.ends_at:
            # Its time was up before the stop (housekeeping ends such offers once a second):
            # it ended so, at its time, as it had been told.
            reason = EndReason.EXPIRED
        at = offer.ends_at if reason is EndReason.EXPIRED else self._clock()
        if reason is EndReason.SOLD_OUT and not await self._stop_if_sold_out(offer.id):
            return None
        hung: Unresponsive | None = None
        if reason is EndReason.EXPIRED or stopped_by_host:
            # Sold out already, its own end held back (its last order on its way, its seller
            # slow or dead): it ends as it sold, and the room hears 0 before the end.
            try:
                if await self._sold_out_already(offer.id):
                    reason = EndReason.SOLD_OUT
            except Unresponsive as error:
                hung = error  # the end is recorded all the same, and finished a round later
        self._announcer.forget(offer.id)
        ended = await self._offers.record_end(
            offer.id, reason, at, free_launch_key=free_launch_key, if_uncounted=if_uncounted
        )
        if ended is None:
            return None
        if hung is not None:
            # Stopping its stock now would wait out the same deadline again: finish_ends
            # does it, one unfinished end a round, as for an end whose stop ran out of time.
            self._unfinished_since[ended.id] = self._clock() - FINISH_GRACE
            raise hung
        await self._finish_end(ended)
        log.info("offer_ended", extra={"offer_id": offer.id, "reason": reason.value})
        return ended

    async def _stop_if_sold_out(self, offer_id: str) -> bool:
        """Whether the offer is still sold out, its stock stopped so in the same step: the
        caller read 0 a moment ago, and a unit given back since (a cancel, the reaper) keeps
        the offer running rather than ending it "sold out" with a unit left unoffered."""
        try:
            return await self._stock.stop_if_sold_out(offer_id)
        except OfferPaused:
            return False  # lost: whoever rebuilds it reads its stock again, and ends it then

    async def _sold_out_already(self, offer_id: str) -> bool:
        """Whether an offer ending by time or by a stop had sold out (its seller's end held back
        by an order on its way, or its seller dead), its stock stopped so: none left, and no
        reservation waiting for its order longer than a live claimer would (ORPHAN_AFTER: its
        units will come back). Redis away, not; Unresponsive, if Redis hangs."""
        try:
            presumed_dead = self._clock() - ORPHAN_AFTER
            if await self._stock.pending_without_order(offer_id, presumed_dead):
                return False
            return await self._stop_if_sold_out(offer_id)
        except Unresponsive:
            raise
        except Unavailable:
            return False

    async def _finish_end(self, ended: FlashOffer) -> None:
        """Stop the stock and tell the room, then clear the note `record_end` left. Should
        either fail, or the process die first, the note stays and `finish_ends` does it again:
        stopping is idempotent, and the room's stream drops a second `offer.ended`."""
        sold_out, announcing, taken = ended.ended_sold_out, False, None
        try:
            if sold_out:  # the room hears 1, then 0, then the end
                await self._announcer.last_unit_told(ended.id)
            taken = await self._stock.stop(ended.id, sold_out=sold_out)
            if taken is None:  # lost, or not yet checked; sold out, it took its whole quantity
                taken = ended.quantity if sold_out else await self._taken_once_checked(ended)
            if sold_out:
                await self._announcer.tell_sold_out(ended)
            announcing = True
            await self._announce_end(ended, taken)
            # From now on the offer books only what it had taken (units_booked).
            await self._offers.end_finished(ended.id, self._clock(), taken=taken)
        except BaseException as error:
            # Seen unfinished since a grace ago: this process's next round tries it again at
            # once, since until the stock is stopped a claim may still be taken.
            self._unfinished_since[ended.id] = self._clock() - FINISH_GRACE
            # Whatever became of the stop (an error, a shutdown), the room hears of the end
            # now; the caller hears the first failure, and `finish_ends` does the rest. Not
            # after a Redis that ran out the deadline: the room's stream is on the same Redis,
            # and would keep the host waiting as long again for the same 503.
            if not announcing and not isinstance(error, Unresponsive):
                with contextlib.suppress(LiveshopError):
                    await self._announce_end(ended, taken)
            raise

    async def finish_ends(self) -> int:
        """Finish the ends that their process left unfinished (it failed or died between
        recording the end and telling the room); each process calls this once a second. An end
        is left to its own process for FINISH_GRACE after this one first sees it unfinished
        (its stock stopped here meanwhile), and one that failed here is tried again at once."""
        now = self._clock()
        unfinished = await self._offers.unfinished_ends(DUE_BATCH)
        # Only the ends still unfinished are remembered: bounded.
        self._unfinished_since = {
            offer.id: self._unfinished_since.get(offer.id, now) for offer in unfinished
        }
        # Ends never tried first, then the one that failed longest ago: however many keep
        # failing, each end gets its turn, one failure a round.
        self._finish_round += 1
        self._finish_failed_in = {
            offer.id: round_
            for offer in unfinished
            if (round_ := self._finish_failed_in.get(offer.id)) is not None
        }
        unfinished.sort(key=lambda offer: self._finish_failed_in.get(offer.id, 0))
        finished = 0
        for offer in unfinished:
            try:
                if now - self._unfinished_since[offer.id] < FINISH_GRACE:
                    await self._stop_meanwhile(offer)
                    continue
                await self._finish_end(offer)
            except LiveshopError:  # the stock or the room's stream is away (logged where it failed)
                # The others wait for the next round: against a hung Redis a try costs 5 s.
                self._finish_failed_in[offer.id] = self._finish_round
                break
            log.warning("offer_end_finished_late", extra={"offer_id": offer.id})
            finished += 1
        return finished

    async def _taken_once_checked(self, ended: FlashOffer) -> int | None:
        """What a stopped stock not yet checked against the orders (it may be outdated) had
        taken, once the rebuild checks it, if that is quick; else unknown: the offer then
        books its whole quantity until its settling checks it (Reaper.settle_due)."""
        if await self._stock.unconfirmed(ended.id) is not None:
            # asyncio.timeout, not wait_for: on 3.11 wait_for could swallow a cancellation
            # that came as the rebuild finished (and a stopping housekeeper waited for good).
            with contextlib.suppress(LiveshopError, TimeoutError):  # the rebuild goes on (shared)
                async with asyncio.timeout(CHECK_SECONDS):
                    await self.rebuild(ended.id)
        # Checked now (here or elsewhere), it counts; still unchecked, or lost: None.
        return await self._stock.stop(ended.id)

    async def _stop_meanwhile(self, offer: FlashOffer) -> None:
        """Stop the stock of an end left to its own process: one paused (a long GC pause, a VM
        stalled) would leave it selling after its end for the whole grace. Stopping twice is
        harmless. Not a sold-out end, whose room must hear its last unit before the stop."""
        if not offer.ended_sold_out:
            await self._stock.stop(offer.id)

    async def _announce_end(self, offer: FlashOffer, taken: int | None) -> None:
        """`offer.ended`, with what was left once the stock stopped (`taken`): a stop or an
        expiry falls between two figures, and no figure may follow the end."""
        if offer.end_reason is None:
            raise RuntimeError(f"offer {offer.id} has not ended")
        left = {} if taken is None else {"remaining": offer.left_after(taken)}
        reason = offer.end_reason.value
        event = {"type": "offer.ended", "offer_id": offer.id, "reason": reason, **left}
        await self._events.publish_room_event(offer.room_id, event, topic=offer.id, last=True)

    async def end_sold_out(self, offer_ids: Iterable[str]) -> int:
        """End the sold-out offers among these that their seller did not (SoldOutEnds)."""
        return await self._sold_out_ends.end_sold_out(offer_ids)

    async def end_due(self) -> int:
        """End every offer whose time is up (each process calls this once a second)."""
        due = await self._offers.due_to_end(self._clock(), DUE_BATCH)
        ended = 0
        for offer in due:
            if await self.end(offer, EndReason.EXPIRED) is not None:
                ended += 1
        return ended

    async def rebuild(self, offer_id: str) -> None:
        """Restore an offer's stock from its orders after the reservation store lost it, from
        a read of the orders made after this call (an order written before it is counted).
        Calls made while a rebuild of the offer is under way here share the next one: a burst
        of claims that all find the offer lost costs two rebuilds, not one each."""
        await self._rebuilds_after_asking(offer_id)

    def stock_moved(self, offer: FlashOffer, figure: StockFigure | None) -> None:
        """A claim or a release changed the stock: tell the room soon (the last unit and sold
        out: now)."""
        self._announcer.stock_moved(offer, figure)

    def last_unit_taken(self, offer: FlashOffer, taken_at: int | None) -> None:
        """A claim here took the offer's last unit alone: see StockAnnouncer.last_unit_taken."""
        self._announcer.last_unit_taken(offer, taken_at)

    async def running_offer_ids(self) -> list[str]:
        """The offers that have not ended (RUNNING_OFFERS_READ at most, those ending first)."""
        return await self._offers.running_ids(RUNNING_OFFERS_READ)

    def forget_quiet_offers(self) -> None:
        """Housekeeping: forget the stock cadence of offers whose stock no longer moves here."""
        self._announcer.forget_quiet()

    async def close(self) -> None:
        await self._announcer.close()


async def _all_of(steps: Iterable[Awaitable[object]]) -> None:
    """Run the steps together, each to its end; then raise the first failure, if any."""
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
