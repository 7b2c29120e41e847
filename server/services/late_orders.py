"""Orders that reach MongoDB after the reaper gave their reservation back.

A claim whose order write misses its deadline is answered "try again", but the write may still
be on its way (a network path holding it, TCP retransmitting it) and land after the reaper,
finding no order under the key `ORPHAN_AFTER` on, has released its units to be sold again. Left
alone, such an order would oversell the offer and put its buyer over the limit. So the reaper
notes each key in MongoDB before it releases it, for as long as a write may still land, and
each round any process looks for orders under the noted keys: each order found is settled as
its claim would have settled it (see `LateOrders.settle`). The note outlives the process that
made it, and is written first: a reaper that dies between the two leaves a note too many, never
a release unwatched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from server.domain.orders import Order
from server.ports import OrderStore

log = logging.getLogger("liveshop.orders")

# How long a write its claimer gave up on may still arrive: Linux retransmits a TCP segment for
# about 15 minutes (tcp_retries2) before it gives the connection up.
LATE_WRITES = timedelta(minutes=15)
# Keys looked under in a round, at most (a new sample each round): after a mass release, such
# as a burst whose orders could not be written, each key is still looked at every few rounds,
# and a round costs MongoDB tens of milliseconds at most rather than one per key.
KEYS_A_ROUND = 500


class LateOrders:
    def __init__(self, orders: OrderStore, clock: Callable[[], datetime]) -> None:
        self._orders = orders
        self._clock = clock

    async def watch(self, offer_id: str, key: str) -> None:
        """The reaper is about to give back the units reserved under `key`, finding no order."""
        await self._orders.watch_key(offer_id, key, until=self._clock() + LATE_WRITES)

    async def settle(
        self,
        holds_its_units: Callable[[Order], Awaitable[bool]],
        tell_buyer: Callable[[Order], Awaitable[None]],
    ) -> int:
        """Settle each order landed under a watched key as its claim would have: attached to
        its reservation, or cancelled when its units are gone (`holds_its_units`); its buyer,
        who heard "try again", told. How many were cancelled."""
        cancelled = 0
        for order in await self._orders.landed_late(self._clock(), KEYS_A_ROUND):
            if await holds_its_units(order):
                await tell_buyer(order)
            else:
                cancelled += 1
                log.warning("late_order_cancelled", extra={"order_id": order.id})
            await self._orders.unwatch_key(order.offer_id, order.idempotency_key)
        return cancelled
