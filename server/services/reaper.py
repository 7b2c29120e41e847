"""Reservations whose claimer died mid-claim, and offers settled once no claim can still land.

A claim reserves units in Redis, writes its order to MongoDB, then attaches the order to the
reservation. A claimer that dies between the first step and the last leaves a reservation no
order is attached to: `ORPHAN_AFTER` after its last try the reaper attaches the order written
under its key, if there is one (the claimer died after the write), and else gives the units
back to be sold again, having first noted the key for an order that may still land
(late_orders.py). An offer whose end was finished `LATE_ORDERS` ago is settled: every such
reservation, however new, is dealt with so, and the offer then books only what its orders claim
of its product's stock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from server.domain.errors import OfferPaused, Unavailable
from server.domain.offers import LATE_ORDERS, ORPHAN_AFTER, PENDING_BATCH, SKEW_MARGIN
from server.domain.orders import Order
from server.ports import OfferStore, OrderStore
from server.services.buyer_notices import BuyerNotices
from server.services.late_orders import LateOrders
from server.services.offers import OfferService
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.orders")

SETTLE_BATCH = 100  # offers settled per housekeeping round


class Reaper:
    def __init__(
        self,
        offers: OfferStore,
        orders: OrderStore,
        stock: StockReservations,
        offer_service: OfferService,
        late: LateOrders,
        buyers: BuyerNotices,
        clock: Callable[[], datetime],
        *,
        holds_its_units: Callable[[Order], Awaitable[bool]],
    ) -> None:
        """`holds_its_units` attaches an order to its reservation, and cancels it if its units
        were given back meanwhile (OrderService): whether it holds them."""
        self._offers = offers
        self._orders = orders
        self._stock = stock
        self._offer_service = offer_service
        self._late = late
        self._buyers = buyers
        self._clock = clock
        self._holds_its_units = holds_its_units

    async def reap_orphans(self, offer_id: str) -> int:
        """Release reservations whose claimer died before writing the order."""
        _, released = await self._reap(offer_id, self._clock() - ORPHAN_AFTER)
        return released

    async def settle_due(self) -> int:
        """Settle the offers whose end was finished LATE_ORDERS ago (each process, once a
        second): every reservation still without an order is attached to the order written
        under its key, or given back, so that a claim of the offer can no longer become an
        order; then the offer is recorded settled, and books only what its orders claim of its
        product's stock (services/bookings.py)."""
        now = self._clock()
        settled = 0
        for offer in await self._offers.due_to_settle(now - LATE_ORDERS, SETTLE_BATCH):
            try:
                ready = await self._stock.is_ready(offer.id)
                if not ready or await self._stock.unconfirmed(offer.id) is not None:
                    # Lost: rebuilt first, which watches the offer for orders still landing
                    # (late_orders.py). Settled from its orders alone, it would book none of
                    # the units an order written later still holds. Rebuilt and not yet
                    # checked against the orders: checked first (the rebuild does it), since
                    # until then it answers nothing of them, and may be outdated.
                    await self._offer_service.rebuild(offer.id)
                # Stopped again first: a rebuild that read the offer before its end and could
                # not read it again after writing its stock (see stock_rebuilds.py) left it
                # unconfirmed. Stopping is idempotent.
                await self._stock.stop(offer.id, sold_out=offer.ended_sold_out)
                seen, _ = await self._reap(offer.id, now + SKEW_MARGIN)  # every one, however new
            except Unavailable:
                break  # the stock is away (logged where it failed): next round
            if seen < PENDING_BATCH:  # else more are left for the next round
                await self._offers.record_settled(offer.id, now)
                settled += 1
        return settled

    async def _reap(self, offer_id: str, older_than: datetime) -> tuple[int, int]:
        """Reservations made before `older_than` that no order was attached to: attached to the
        order written under their key, else released. How many there were, and released."""
        pending_ones = await self._stock.pending_without_order(offer_id, older_than)
        released = 0
        for pending in pending_ones:
            key = pending.idempotency_key
            # The claimer may have died (or lost its database) after the write, before the
            # attach: its order holds these units, so they are not to be sold again.
            written = await self._orders.by_key(offer_id, key)
            if written is not None and written.holds_stock:
                # Another process's reaper may have found no order and given the units back
                # since this one listed the key: then the order is cancelled, not announced.
                if await self._holds_its_units(written):
                    await self._buyers.tell_created(written)  # its claimer may have died first
                continue
            if written is None:
                await self._late.watch(offer_id, key)  # its order may yet land: late_orders.py
            # Else an earlier attempt's order, cancelled since, its key unknown to the stock
            # (a rebuild missed it): the units this attempt reserved are nobody's either.
            if await self._release(offer_id, key):
                released += 1
        if released:
            log.warning("orphan_reservations_released", extra={"offer_id": offer_id, "n": released})
            offer = await self._offers.get(offer_id)
            self._offer_service.stock_moved(offer, None)
        return len(pending_ones), released

    async def _release(self, offer_id: str, key: str) -> bool:
        try:
            return await self._stock.release(offer_id, key, orphan_only=True)
        except OfferPaused:
            return False  # lost meanwhile: its rebuild keeps only the claims that have orders
