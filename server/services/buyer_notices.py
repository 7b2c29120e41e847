"""`order.updated`: every change of an order reaches every connection of its buyer, on every
process, through the broker. A change is noted on the order as it is stored, and the note is
cleared once the buyer is told; housekeeping tells the buyers of changes left noted (the broker
was away, or the process died in between), rather than never."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from schemas.commerce import order_to_wire
from server.domain.errors import Unavailable
from server.domain.orders import Order
from server.ports import OrderStore

log = logging.getLogger("liveshop.orders")

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
TELL_BATCH = 100  # untold orders told per housekeeping round
# How long a change is left to the process that made it before housekeeping tells it: that
# process publishes and clears the note within milliseconds. One slower still (each of its two
# round trips is bounded by a backend deadline) only makes the buyer hear the order twice.
TELL_AFTER = timedelta(seconds=5)
# How long an order whose notice failed for a reason of its own (a bug) is left out of the
# rounds, so that however many of them there are, the other buyers are told (and each failure
# logs its traceback once a minute, not once a second).
FAILED_TELL_BACKOFF = timedelta(minutes=1)


class BuyerNotices:
    def __init__(self, orders: OrderStore, notify: Notify, clock: Callable[[], datetime]) -> None:
        self._orders = orders
        self._notify = notify
        self._clock = clock
        self._failing: dict[str, datetime] = {}  # order id -> left out until then

    async def tell_created(self, order: Order) -> None:
        """Tell the buyer of an order just written (or attached by the reaper); if the broker is
        away, note it for `tell_untold`. Never raises: the order stands either way."""
        if await self._told(order):
            return
        try:
            await self._orders.note_buyer_untold(order.id)
        except Unavailable:  # MongoDB away as well: the buyer reads it on their next list
            log.warning("order_update_not_sent", extra={"order_id": order.id})

    async def tell_moved(self, order: Order) -> None:
        """Tell the buyer of the move just stored, which noted them as untold (`save_move`),
        and clear that note. Never raises: the note stays until someone tells them."""
        if await self._told(order):
            with contextlib.suppress(Unavailable):  # if not, housekeeping tells it once more
                await self._orders.buyer_told(order.id, len(order.history))

    async def tell_untold(self) -> int:
        """Tell the buyers noted as untold, each the order as it stands now (every process, once
        a second). At least once: two processes may both tell it, the same state twice."""
        told, now = 0, self._clock()
        self._failing = {order_id: t for order_id, t in self._failing.items() if t > now}
        untold = await self._orders.buyers_untold(
            now - TELL_AFTER, TELL_BATCH, skip=self._failing.keys()
        )
        for order in untold:
            try:
                await self._notify(order.buyer_id, _updated(order))
            except Unavailable:
                break  # the broker is still away: next round
            except Exception:  # a bug with this order: found by its traceback; tell the others
                log.exception("order_update_failed", extra={"order_id": order.id})
                self._failing[order.id] = now + FAILED_TELL_BACKOFF
                continue
            await self._orders.buyer_told(order.id, len(order.history))
            told += 1
        return told

    async def _told(self, order: Order) -> bool:
        try:
            await self._notify(order.buyer_id, _updated(order))
        except Unavailable:
            log.warning("order_update_deferred", extra={"order_id": order.id})
            return False
        except Exception:  # a bug: found by its traceback; the order stands, told later
            log.exception("order_update_failed", extra={"order_id": order.id})
            return False
        return True


def _updated(order: Order) -> dict[str, Any]:
    return {"type": "order.updated", "order": order_to_wire(order)}
