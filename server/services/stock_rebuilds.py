"""Restoring an offer's stock from its orders after the reservation store (Redis) lost it.

Claims of a lost offer answer `paused` until a rebuild has written its stock again: the
quantity less the units of the orders that hold stock, each buyer's count, every key (so a
claim sent again still finds its order). Any process may rebuild, and several may at once: the
store keeps the first stock written. An order may land after a rebuild read the orders without
it (its write was on its way when Redis lost the offer): the rebuild notes its offer first, and
late_orders.py settles such an order. A stock rebuilt from a read that orders written since
outdated (its rebuilder paused between the two, while others rebuilt it, sold and lost it again)
is dropped before claims may use it, and rebuilt again: orders are never deleted, so a count
above the orders it was rebuilt from says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime

from server.domain.offers import FlashOffer, RecoveredClaim, UnconfirmedStock
from server.domain.orders import Order
from server.ports import OfferStore, OrderStore
from server.services.late_orders import LATE_WRITES
from server.stock_port import StockReservations

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
        if not await self._rebuild_once(offer_id):
            # Built from a read that orders written since had outdated, and forgotten: once
            # more, from a read that counts them (should that be outdated too, claims wait
            # for the next rebuild a claim or a housekeeping round asks for).
            await self._rebuild_once(offer_id)

    async def _rebuild_once(self, offer_id: str) -> bool:
        """False when the stock it found unconfirmed was outdated, and is dropped."""
        # Read here, not taken from the caller: a cached copy may predate the offer's end, and
        # a stopped or sold-out offer must not reopen until its end time.
        offer = await self._offers.get(offer_id)
        # Noted before the read: an order written after it is found and settled (late_orders.py).
        read_at = self._clock()
        await self._orders.watch_offer(offer.id, until=read_at + LATE_WRITES)
        orders = await self._orders.of_offer(offer.id)
        # Read after the orders: a key the reaper gives up meanwhile is one the read may count;
        # a stock's notes are kept before claims may use it, so the read holds no claim on a
        # stock whose notes these miss. The last build checked before the orders it noted held:
        # a check made between the two reads adds its build to the orders' notes, and keeps
        # the earlier builds there.
        last_checked = await self._orders.last_stock_checked(offer.id)
        given_up, held_by = await asyncio.gather(  # sent together: claims wait for the rebuild
            self._orders.watched_keys(offer.id, self._clock()),
            self._orders.checked_of_offer(offer.id),
        )
        claims = recovered_claims(
            orders,
            given_up,
            offer.units_orders_may_hold,
            offer.per_user_limit,
            held_by=held_by,
            last_checked=last_checked,
        )
        rebuilt = await self._stock.rebuild(
            offer.id,
            quantity=offer.quantity,
            per_user_limit=offer.per_user_limit,
            starts_at=offer.starts_at,
            ends_at=offer.ends_at,
            stopped=offer.end_reason is not None,
            claims=claims,
            sold_out=offer.ended_sold_out,
            after_build=last_checked,
        )
        if offer.end_reason is not None:
            # Also a stock another rebuild left unconfirmed: claims hear the end, not "paused".
            await self._stock.stop(offer.id, sold_out=offer.ended_sold_out)
        unconfirmed = await self._stock.unconfirmed(offer.id)
        if unconfirmed is not None and not await self._check(offer, unconfirmed):
            return False
        if rebuilt:
            log.warning("offer_stock_rebuilt", extra={"offer_id": offer.id, "orders": len(claims)})
        return True

    async def _check(self, offer: FlashOffer, unconfirmed: UnconfirmedStock) -> bool:
        """Let claims in to a stock a rebuild left unconfirmed (this one's or another's) once
        it is checked against the orders; until then it answers nothing of them (attaches
        wait, a stop does not count). False when it was outdated, and is dropped."""
        # Its rebuilder, this process or another, may have read the orders long before it
        # wrote the stock (a pause), and others rebuilt, sold and lost it again meanwhile:
        # a stock that knows fewer orders than there are would sell their units again.
        if await self._orders.count_of_offer(offer.id) > unconfirmed.orders_read:
            await self._stock.drop_unconfirmed(offer.id, unconfirmed.token)
            log.warning("offer_stock_rebuild_outdated", extra={"offer_id": offer.id})
            return False
        # Before any claim may use it: should Redis lose it too, the next rebuild counts first
        # the orders it holds, then the claims made on it, over orders landing late. Should
        # these notes fail, it stays unconfirmed.
        await self._orders.checked_after_rebuild(sorted(unconfirmed.held_orders), unconfirmed.build)
        if await self._orders.note_stock_checked(offer.id, unconfirmed.build) > unconfirmed.build:
            # A later stock was checked since its rebuilder read the last build (it paused),
            # and this one, built by a Redis whose clock is behind, comes before it: its
            # claims would count with that one's late orders. Built again, after it.
            await self._stock.drop_unconfirmed(offer.id, unconfirmed.token)
            log.warning("offer_stock_rebuild_outdated", extra={"offer_id": offer.id})
            return False
        if offer.end_reason is None:
            # The offer may have ended since it was read above, its end's stop finding no
            # stock. The end is recorded before its stock is stopped, so either the read below
            # sees it, or that stop comes after and finds this stock (written before this read
            # it); should that stock be lost, a later rebuild's is checked in its turn. The
            # latest read: a primary that was replaced since the end could still say "running".
            latest = await self._offers.get_latest(offer.id)
            if latest.end_reason is not None:
                await self._stock.stop(offer.id, sold_out=latest.ended_sold_out)
        await self._stock.confirm_open(offer.id, unconfirmed.token)  # stopped, it lets none in
        return True


def recovered_claims(
    orders: list[Order],
    given_up: set[str],
    units: int,
    per_user_limit: int,
    *,
    held_by: Mapping[str, Collection[int]],
    last_checked: int | None,
) -> list[RecoveredClaim]:
    """One claim for each order, to rebuild the offer's stock from. An order holds its units
    only while they fit in `units` (the offer's quantity, or what its end left it) and its
    buyer's limit, counted oldest first within each of these, in turn:
    - the orders noted held (`held_by`: counted by a stock's rebuild, or found attached to it
      since) by the last stock let in after a rebuild (`last_checked`, its build);
    - the orders of that stock's claims (its build), which their buyers were answered;
    - the others: before any rebuild, every order; after one, orders that landed after its
      read, whose units were not in its stock (their claimers heard "try again");
    - last, the other orders under keys the reaper gave up (`given_up`): such an order landed
      after its units went back, and they may have gone to another claim since.
    One that does not fit holds nothing: checked after the rebuild while pending
    (late_orders.py), it is cancelled, as it would have been without the rebuild. Counted by
    age alone, an order that landed late after a rebuild took the units of one answered since,
    should Redis lose the offer again before a round checked it. (Orders are told apart by
    their stock, not by their creation time: that is each claiming process's clock, and one
    ahead of the rebuilder's would put a late order among the claims. A stock's build is
    above the last one checked, whatever Redis's clock, and an order that a retry attached to
    a later stock than its own is noted held by it.)"""

    def turn(order: Order) -> int:
        if last_checked is not None and last_checked in held_by.get(order.id, ()):
            return 0  # even under a key given up: it held units since
        if order.idempotency_key in given_up:
            return 3
        return 1 if last_checked is not None and order.stock_build == last_checked else 2

    held_by_buyer: dict[str, int] = {}
    units_held = 0
    claims = []
    for order in sorted(orders, key=turn):  # stable: oldest first within each turn
        by_buyer = held_by_buyer.get(order.buyer_id, 0) + order.quantity
        held = (
            order.holds_stock
            and by_buyer <= per_user_limit
            and units_held + order.quantity <= units
        )
        if held:
            held_by_buyer[order.buyer_id] = by_buyer
            units_held += order.quantity
        claims.append(claim_of(order, held=held))
    return claims


def claim_of(order: Order, *, held: bool) -> RecoveredClaim:
    """The claim an order remembers, to rebuild its offer's stock or keep its key with."""
    return RecoveredClaim(
        idempotency_key=order.idempotency_key,
        buyer_id=order.buyer_id,
        quantity=order.quantity,
        order_id=order.id,
        held=held,
        reservation_id=order.reservation_id,
    )
