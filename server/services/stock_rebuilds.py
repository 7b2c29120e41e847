"""Restoring an offer's stock from its orders after the reservation store (Redis) lost it.

Claims of a lost offer answer `paused` until a rebuild has written its stock again: the
quantity less the units of the orders that hold stock, each buyer's count, every key (so a
claim sent again still finds its order). Any process may rebuild, and several may at once: the
store keeps the first stock written. An order may land after a rebuild read the orders without
it (its write was on its way when Redis lost the offer): the rebuild notes its offer first, and
late_orders.py settles such an order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from server.domain.offers import RecoveredClaim
from server.ports import OfferStore, OrderStore, StockReservations
from server.services.late_orders import LATE_WRITES

log = logging.getLogger("liveshop.offers")


class StockRebuilds:
    def __init__(
        self,
        offers: OfferStore,
        orders: OrderStore,
        stock: StockReservations,
        clock: Callable[[], datetime],
    ) -> None:
        self._offers = offers
        self._orders = orders
        self._stock = stock
        self._clock = clock

    async def rebuild(self, offer_id: str) -> None:
        """Restore an offer's stock from its orders after the reservation store lost it."""
        # Read here, not taken from the caller: a cached copy may predate the offer's end, and
        # a stopped or sold-out offer must not reopen until its end time.
        offer = await self._offers.get(offer_id)
        # Noted before the read: an order written after it is found and settled (late_orders.py).
        await self._orders.watch_offer(offer.id, until=self._clock() + LATE_WRITES)
        orders = await self._orders.of_offer(offer.id)
        claims = [
            RecoveredClaim(
                idempotency_key=order.idempotency_key,
                buyer_id=order.buyer_id,
                quantity=order.quantity,
                order_id=order.id,
                held=order.holds_stock,
                reservation_id=order.reservation_id,
            )
            for order in orders
        ]
        rebuilt = await self._stock.rebuild(
            offer.id,
            quantity=offer.quantity,
            per_user_limit=offer.per_user_limit,
            starts_at=offer.starts_at,
            ends_at=offer.ends_at,
            stopped=offer.end_reason is not None,
            claims=claims,
            sold_out=offer.ended_sold_out,
        )
        if offer.end_reason is not None:
            # Also a stock another rebuild left unconfirmed: claims hear the end, not "paused".
            await self._stock.stop(offer.id, sold_out=offer.ended_sold_out)
        elif (token := await self._stock.unconfirmed(offer.id)) is not None:
            # Unconfirmed: the offer may have ended since it was read above, its end's stop
            # finding no stock. The end is recorded before its stock is stopped, so either the
            # read below sees it, or that stop comes after and finds the stock `token` names
            # (written before this read it); should that stock be lost, a later rebuild's has
            # a token of its own. Should the read fail, claims wait for the next rebuild. The
            # latest read: a primary that was replaced since the end could still say "running".
            latest = await self._offers.get_latest(offer.id)
            if latest.end_reason is None:
                await self._stock.confirm_open(offer.id, token)
            else:
                await self._stock.stop(offer.id, sold_out=latest.ended_sold_out)
        if rebuilt:
            log.warning("offer_stock_rebuilt", extra={"offer_id": offer.id, "orders": len(claims)})
