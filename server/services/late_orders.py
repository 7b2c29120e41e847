"""Orders that reach MongoDB after the reaper gave their reservation back.

A claim whose order write misses its deadline is answered "try again", but the write may still
be on its way (a network path holding it, TCP retransmitting it) and land after the reaper,
finding no order under the key `ORPHAN_AFTER` on, has released its units to be sold again. Left
alone, such an order would oversell the offer and put its buyer over the limit. So a process
remembers the keys it released for as long as a write may still land, and each round looks for
orders under them: each order found is settled as its claim would have settled it (see
`LateOrders.settle`).
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


class LateOrders:
    def __init__(self, orders: OrderStore, clock: Callable[[], datetime]) -> None:
        self._orders = orders
        self._clock = clock
        self._released: dict[str, dict[str, datetime]] = {}  # offer id -> key -> released at

    def released(self, offer_id: str, key: str) -> None:
        """The reaper gave back the units reserved under `key`, finding no order."""
        self._released.setdefault(offer_id, {})[key] = self._clock()

    async def settle(
        self,
        holds_its_units: Callable[[Order], Awaitable[bool]],
        tell_buyer: Callable[[Order], Awaitable[None]],
    ) -> int:
        """Settle each order landed under a released key as its claim would have: attached to
        its reservation, or cancelled when its units are gone (`holds_its_units`); its buyer,
        who heard "try again", told. How many were cancelled."""
        cancelled = 0
        for order in await self._landed():
            if await holds_its_units(order):
                await tell_buyer(order)
            else:
                cancelled += 1
                log.warning("late_order_cancelled", extra={"order_id": order.id})
            self._released.get(order.offer_id, {}).pop(order.idempotency_key, None)
        return cancelled

    async def _landed(self) -> list[Order]:
        """Orders written under the keys released, one query an offer; keys older than
        LATE_WRITES are forgotten."""
        horizon = self._clock() - LATE_WRITES
        landed: list[Order] = []
        for offer_id, keys in list(self._released.items()):
            for key in [k for k, at in keys.items() if at < horizon]:
                del keys[key]
            if keys:
                landed += await self._orders.by_keys(offer_id, list(keys))
            else:
                del self._released[offer_id]
        return landed
