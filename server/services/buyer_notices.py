"""`order.updated`: every change of an order reaches every connection of its buyer, on every
process, through the broker. A change made while the broker is away is noted on the order, and
housekeeping tells the buyer once it is back, rather than never."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from schemas.commerce import order_to_wire
from server.domain.errors import Unavailable
from server.domain.orders import Order
from server.ports import OrderStore

log = logging.getLogger("liveshop.orders")

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
TELL_BATCH = 100  # untold orders told per housekeeping round


class BuyerNotices:
    def __init__(self, orders: OrderStore, notify: Notify) -> None:
        self._orders = orders
        self._notify = notify

    async def tell(self, order: Order) -> None:
        """Tell the buyer the order as it now stands; if the broker is away, note it for
        `tell_untold`. Never raises: the change itself stands either way."""
        try:
            await self._notify(order.buyer_id, _updated(order))
        except Unavailable:
            log.warning("order_update_deferred", extra={"order_id": order.id})
            try:
                await self._orders.note_buyer_untold(order.id)
            except Unavailable:  # MongoDB away as well: the buyer reads it on their next list
                log.warning("order_update_not_sent", extra={"order_id": order.id})

    async def tell_untold(self) -> int:
        """Tell the buyers noted as untold, each the order as it stands now (every process, once
        a second). At least once: two processes may both tell it, the same state twice."""
        told = 0
        for order in await self._orders.buyers_untold(TELL_BATCH):
            try:
                await self._notify(order.buyer_id, _updated(order))
            except Unavailable:
                break  # the broker is still away: next round
            await self._orders.buyer_told(order.id, len(order.history))
            told += 1
        return told


def _updated(order: Order) -> dict[str, Any]:
    return {"type": "order.updated", "order": order_to_wire(order)}
