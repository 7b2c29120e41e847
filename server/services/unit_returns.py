"""Giving an order's units back to its offer's stock: after a cancel or an expiry, for a claim
sent again whose units no order holds, and, each housekeeping round, whatever failed to go back
before (the stock was away, or the process died between the order's move and the give-back)."""

from __future__ import annotations

import contextlib
import functools
import logging

from server.domain.errors import LiveshopError, OfferPaused, Unavailable
from server.domain.orders import Order
from server.ports import OfferStore, OrderStore
from server.services.offers import OfferService
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.orders")

RETURN_BATCH = 100  # give-backs retried per housekeeping round


class UnitReturns:
    def __init__(
        self,
        offers: OfferStore,
        orders: OrderStore,
        stock: StockReservations,
        offer_service: OfferService,
    ) -> None:
        self._offers = offers
        self._orders = orders
        self._stock = stock
        self._offer_service = offer_service

    async def give_back(self, order: Order) -> bool:
        """Return the order's units to its offer (the room hears of it if the offer runs), then
        clear the order's note that they are to go back. Releasing is idempotent, so doing it
        twice is harmless. False when the stock is away: the note stays, and housekeeping tries
        again; the order's own move stands either way."""
        try:
            released = await self.release(order)
        except Unavailable:
            return False
        with contextlib.suppress(Unavailable):  # if not, the next try releases nothing, clears it
            await self._orders.units_returned(order.id)
        if released:
            try:
                offer = await self._offers.get(order.offer_id)
            except LiveshopError as error:  # the units are back; only the room's figure waits
                log.warning("stock_announce_skipped", extra={"code": error.code})
            else:
                self._offer_service.stock_moved(offer, None)  # told while the offer runs
        return True

    async def return_due(self) -> int:
        """Finish the give-backs that failed or never ran; how many it finished."""
        finished = 0
        stuck: set[str] = set()  # offer ids
        for order in await self._orders.units_to_return(RETURN_BATCH):
            if order.offer_id in stuck:
                continue  # one try per offer and round: a Redis that hangs costs 5 s a try
            if await self.give_back(order):
                finished += 1
            else:
                stuck.add(order.offer_id)  # the others' offers may fare better
        return finished

    async def release(self, order: Order, *, own: str | None = None) -> bool:
        """Give back the units held under the order's key, naming the order on the key; with
        `own`, only if the key's reservation is that one and no order holds it."""
        release = functools.partial(
            self._stock.release,
            order.offer_id,
            order.idempotency_key,
            for_order=order.id,
            reservation_id=own,
            orphan_only=own is not None,
        )
        try:
            return await release()
        except OfferPaused:
            pass
        if await self.settled(order.offer_id):
            return False  # a settled offer's stock is never rebuilt (see `settled`)
        # The offer's stock was lost (Redis restarted): rebuild it from the orders, where this
        # one holds nothing now, then release anyway, in case a rebuild that read the orders
        # before this order's move won the race and holds its units.
        await self._offer_service.rebuild(order.offer_id)
        return await release()

    async def settled(self, offer_id: str) -> bool:
        """Whether the offer settled: lost with its stock was the release its settling made, and
        a rebuild would let an order written late take a unit its product's next offer booked."""
        return (await self._offers.get(offer_id)).settled_at is not None
