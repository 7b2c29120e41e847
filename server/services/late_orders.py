"""Orders that reach MongoDB after the stock they reserved was given back or forgotten.

A claim whose order write misses its deadline is answered "try again", but the write may still
be on its way (a network path holding it, TCP retransmitting it) and land after the units it
reserved are no longer its own:
- the reaper, finding no order under the key `ORPHAN_AFTER` on, released them to be sold again;
- Redis lost the offer, and a rebuild restored its stock from the orders written so far, which
  did not include this one: its key is unknown to the rebuilt stock.
Left alone, such an order would oversell the offer and put its buyer over the limit. So the
reaper notes each key in MongoDB before it releases it, and a rebuild notes its offer before it
reads the orders, for as long as a write may still land; each round any process looks for
orders under the noted keys, and for pending orders of the noted offers not yet checked, and
settles each as its claim would have (see `LateOrders.settle`). A note outlives the process
that made it, and is written first: a process that dies between the two leaves a note too
many, never a release or a rebuild unwatched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from server.domain.offers import NO_BUILD, AttachOutcome
from server.domain.orders import Order
from server.ports import OrderStore
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.orders")

# How long a write its claimer gave up on may still arrive: Linux retransmits a TCP segment for
# about 15 minutes (tcp_retries2) before it gives the connection up.
LATE_WRITES = timedelta(minutes=15)
# Keys looked under in a round, at most (a new sample each round): after a mass release, such
# as a burst whose orders could not be written, each key is still looked at every few rounds,
# and a round costs MongoDB tens of milliseconds at most rather than one per key.
KEYS_A_ROUND = 500
# Pending orders of rebuilt offers checked in a round, at most: one attach each, sent together
# (the reservation store batches them), once.
CHECKS_A_ROUND = 500


class LateOrders:
    def __init__(
        self,
        orders: OrderStore,
        stock: StockReservations,
        clock: Callable[[], datetime],
        *,
        attach: Callable[[Order], Awaitable[AttachOutcome]],
        cancel: Callable[[Order], Awaitable[bool]],
        tell_buyer: Callable[[Order], Awaitable[None]],
        rebuild: Callable[[str], Awaitable[None]],
    ) -> None:
        """What the order service does with such an order: `attach` it to its reservation
        (rebuilding a lost stock first), `cancel` it (whether this call did), `tell_buyer` of
        it; and `rebuild` an offer's stock from its orders (OfferService.rebuild)."""
        self._orders = orders
        self._stock = stock
        self._clock = clock
        self._attach = attach
        self._cancel = cancel
        self._tell_buyer = tell_buyer
        self._rebuild = rebuild

    async def watch(self, offer_id: str, key: str) -> None:
        """The reaper is about to give back the units reserved under `key`, finding no order."""
        await self._orders.watch_key(offer_id, key, until=self._clock() + LATE_WRITES)

    async def settle(self) -> int:
        """Settle each order landed under a watched key as its claim would have: attached to
        its reservation, its buyer, who heard "try again", told; or, its units gone,
        cancelled. Then check the pending orders of rebuilt offers. How many this call
        cancelled."""
        now, cancelled = self._clock(), 0
        for order in await self._orders.landed_late(now, KEYS_A_ROUND):
            if await self._attach(order) is AttachOutcome.ATTACHED:
                await self._tell_buyer(order)
            elif await self._cancel(order):
                cancelled += 1
                log.warning("late_order_cancelled", extra={"order_id": order.id})
            await self._orders.unwatch_key(order.offer_id, order.idempotency_key)
        return cancelled + await self._check_rebuilt(now)

    async def _check_rebuilt(self, now: datetime) -> int:
        """Check each pending order of a rebuilt offer once: most are orders the rebuild
        counted, or new ones, attached already, and their buyers were told."""
        unchecked = await self._orders.unchecked_after_rebuild(now, CHECKS_A_ROUND)
        # Sent together: the reservation store batches them. One that fails is checked again
        # next round; the others go on, and the round fails once they are done.
        outcomes = await asyncio.gather(
            *(
                self._stock.attach_order(o.offer_id, o.idempotency_key, o.id, quantity=o.quantity)
                for o, _ in unchecked
            ),
            return_exceptions=True,
        )
        checks = [(*check, outcome) for check, outcome in zip(unchecked, outcomes, strict=True)]
        await self._note_attached(checks)
        cancelled, lost_again = 0, set()
        unheld = (AttachOutcome.RELEASED, AttachOutcome.UNKNOWN)
        for order, _, outcome in checks:
            if outcome is AttachOutcome.PAUSED:
                lost_again.add(order.offer_id)
            elif outcome in unheld and await self._cancel(order):
                cancelled += 1
                log.warning("late_order_cancelled", extra={"order_id": order.id})
        for offer_id in lost_again:
            # Lost again, or its rebuild has yet to write it: rebuilt here (nothing else may ask
            # for an offer nobody watches), from a read of the orders that counts these; they
            # are checked, attached, next round, and meanwhile leave room for other offers'.
            await self._rebuild(offer_id)
        failed = [outcome for _, _, outcome in checks if isinstance(outcome, BaseException)]
        if failed:
            raise failed[0]
        return cancelled

    async def _note_attached(self, checks: Sequence[tuple[Order, int, object]]) -> None:
        """Note the orders found attached held by the stock last checked as read, if that is
        still the last after the attaches: a stock checked meanwhile may be the one they were
        attached to (attaches wait while a stock is unchecked), and they are noted by it, or
        checked again next round. Noted by a build whose stock never held it, an order would
        count first in a rebuild that read that build (stock_rebuilds.recovered_claims). (A
        stock rebuilt once its offer ended is never checked; it holds only orders that every
        later rebuild of the ended offer counts too.)"""
        attached: dict[str, tuple[int, list[str]]] = {}
        for order, build, outcome in checks:
            if outcome is AttachOutcome.ATTACHED:
                attached.setdefault(order.offer_id, (build, []))[1].append(order.id)
        for offer_id, (build, order_ids) in attached.items():
            if (await self._orders.last_stock_checked(offer_id) or NO_BUILD) == build:
                await self._orders.checked_after_rebuild(order_ids, build)
