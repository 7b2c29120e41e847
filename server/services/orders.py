"""Claims and orders: reserve stock, write the order, follow it until paid, cancelled or expired.

A claim reserves units in the reservation store (one atomic step that also dedupes retries),
then writes the order in MongoDB (idempotent on the same key), then attaches the order to the
reservation. A process that dies between the first and last step leaves a reservation with
no order attached: the reaper attaches the order if it was written, and releases the units if
not. An order that can no longer hold its units is cancelled.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from schemas.http import sold_product_to_wire
from server.background import BackgroundTasks
from server.domain.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)
from server.domain.identity import SYSTEM, Identity, scoped_key
from server.domain.ids import new_id
from server.domain.offers import AttachOutcome, ClaimOutcome, ClaimResult, FlashOffer, claim_error
from server.domain.orders import (
    Address,
    Order,
    OrderStatus,
    cancelled_by,
    claim_expired,
    ensure_same_claim,
    may_see,
    not_cancellable,
    other_terms,
    place_order,
    same_claim,
)
from server.domain.pages import Page, decode_cursor, page_of
from server.domain.rooms import ensure_can_manage
from server.domain.times import utc_now
from server.ports import OfferStore, OrderStore, ProductStore, RoomStore
from server.services.buyer_notices import BuyerNotices, Notify
from server.services.late_orders import LateOrders
from server.services.load_once import LoadOnce
from server.services.offers import OfferService
from server.services.reaper import Reaper
from server.services.room_bans import RoomBans
from server.services.stock_rebuilds import claim_of
from server.services.unit_returns import UnitReturns
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.orders")

EXPIRY_BATCH = 200
RECENT_CLAIMS = timedelta(hours=1)
CACHED_OFFERS = 1000


class OrderService:
    def __init__(
        self,
        offers: OfferStore,
        orders: OrderStore,
        products: ProductStore,
        stock: StockReservations,
        offer_service: OfferService,
        notify: Notify,
        clock: Callable[[], datetime] = utc_now,
        *,
        rooms: RoomStore,
        bans: RoomBans | None = None,
    ) -> None:
        self._offers = offers
        self._orders = orders
        self._rooms = rooms
        self._products = products
        self._stock = stock
        self._offer_service = offer_service
        self._buyers = BuyerNotices(orders, notify, clock)
        self._returns = UnitReturns(offers, orders, stock, offer_service)
        self._late = LateOrders(
            orders,
            stock,
            clock,
            attach=self._attach,
            cancel=self._cancel_lost,
            tell_buyer=self._buyers.tell_created,
            rebuild=offer_service.rebuild,
        )
        self._reaper = Reaper(
            offers,
            orders,
            stock,
            offer_service,
            self._late,
            self._buyers,
            clock,
            holds_its_units=self._holds_its_units,
        )
        self._clock = clock
        self._bans = bans  # None where nobody is ever banned (tests of claims alone)
        # Offers this process reserved stock for lately: it reaps their orphans even when no
        # viewer of the room is connected here (claims over HTTP).
        self._claimed_offers: dict[str, datetime] = {}
        # The offer as launched: only its end changes later, and the reservation store, not
        # this copy, decides whether a claim is still in time.
        self._launched = LoadOnce(offers.get, size=CACHED_OFFERS)
        # The product as sold in each offer, taken once per offer and process.
        self._snapshots = LoadOnce(self._load_snapshot, size=CACHED_OFFERS)
        self._writes = BackgroundTasks(log, "order_write_failed")

    async def close(self) -> None:
        """Wait for the orders being written and attached (before the stores close)."""
        await self._writes.close()

    # Claims -----------------------------------------------------------------------------------

    async def claim(
        self,
        offer_id: str,
        buyer: Identity,
        *,
        quantity: int,
        idempotency_key: str,
        address: Address,
        room_id: str | None = None,
    ) -> tuple[Order, bool]:
        """The order for this claim and whether it is new (False: a retry of an earlier one).
        From a room's socket, `room_id` keeps claims to that room's offers."""
        if buyer.anonymous:
            raise Forbidden("sign in to buy")
        offer = await self._launched.get(offer_id)
        if room_id is not None and offer.room_id != room_id:
            raise NotFound(f"offer {offer_id} not found in this room")
        # Keys are the client's, unique per buyer: scoped here so two buyers never collide.
        key = scoped_key(buyer.user_id, idempotency_key)
        refusal = await self._may_not_buy(offer, buyer)
        # But a claim sent again goes on, to get its order back (made before the ban, say).
        if refusal is not None and not await self._stock.knows_claim(offer.id, key):
            raise refusal
        self._claimed_offers[offer.id] = self._clock()
        # The reservation store knows every key (a lost one is rebuilt from the orders first),
        # so a refused claim never touches MongoDB: in a flash sale most claims are refused.
        result = await self._stock.claim(offer.id, buyer.user_id, quantity, key, self._clock())
        if result.outcome is ClaimOutcome.PAUSED:
            await self._offer_service.rebuild(offer.id)
            result = await self._stock.claim(offer.id, buyer.user_id, quantity, key, self._clock())
        error = claim_error(result, offer)
        if error is not None:
            raise error
        if result.outcome is ClaimOutcome.DUPLICATE:
            if result.quantity and result.quantity != quantity:
                raise other_terms()
            if result.order_id is not None:
                order = await self._orders.get(result.order_id)
                ensure_same_claim(order, quantity, address)
                return order, False
            if result.released:
                raise claim_expired()
        fresh = result.outcome is ClaimOutcome.RESERVED
        if fresh and result.remaining == 0 and quantity == 1:
            self._offer_service.last_unit_taken(offer, result.stock_version)
        told_early = fresh and result.remaining == 1
        if told_early:
            # Told before the order is written: the claim that takes the last unit may write
            # its order first, and end the offer, and the room must hear "1 left" before that.
            self._offer_service.stock_moved(offer, result.figure())
        order, created = await self._write_order(
            offer, buyer, key, quantity, address, result, fresh=fresh
        )
        if created and not told_early:
            self._offer_service.stock_moved(offer, result.figure())
        return order, created

    async def _may_not_buy(self, offer: FlashOffer, buyer: Identity) -> Forbidden | None:
        """Why the buyer may claim nothing more of the offer, if they may not."""
        if buyer.user_id == offer.host_id:
            # A host's own orders would swell the room's sales, and take units from shoppers.
            return Forbidden("a host cannot buy from their own offers", code="own_offer")
        if (
            self._bans is not None
            and not buyer.staff
            and await self._bans.is_banned(offer.room_id, buyer.user_id)
        ):
            return Forbidden("you are banned from this room", code="banned")
        return None

    async def _write_order(
        self,
        offer: FlashOffer,
        buyer: Identity,
        key: str,
        quantity: int,
        address: Address,
        claimed: ClaimResult,
        *,
        fresh: bool,
    ) -> tuple[Order, bool]:
        """The order for a reservation and whether this call wrote it. `fresh`: this call made
        the reservation (else an earlier attempt of the claim did, and it is that one's)."""
        order = place_order(
            order_id=new_id("o"),
            idempotency_key=key,
            offer=offer,
            buyer_id=buyer.user_id,
            product=await self._snapshots.get(offer.id),  # place_order copies it
            quantity=quantity,
            address=address,
            now=self._clock(),
            reservation_id=claimed.reservation_id,
            stock_build=claimed.stock_build,
        )
        # Shielded, and waited for at shutdown (close): once the order may be written, a
        # claimer that goes away (a dropped socket, a drain) must not stop the write and the
        # attach halfway. An order left unattached holds its units, its buyer untold, until the
        # reaper attaches it (ORPHAN_AFTER). Its error is logged too: once its claimer has
        # gone, nobody else would hear of it.
        write = self._writes.spawn(self._store_and_attach(order, fresh=fresh))
        self._writes.finish_on_close(write)
        return await asyncio.shield(write)

    async def _store_and_attach(self, order: Order, *, fresh: bool) -> tuple[Order, bool]:
        stored = await self._orders.create(order)
        created = stored.id == order.id  # else an earlier attempt of this claim wrote it
        same_terms = same_claim(stored, order.quantity, order.shipping_address)
        # Only this attempt's own reservation goes back below, and only while no order holds
        # it: Redis may have lost the offer since this attempt reserved, and the key now be a
        # retry's, or an earlier attempt's order have been attached to this one's units.
        own = order.reservation_id
        if not stored.holds_stock:
            # An earlier attempt's order, cancelled or expired since, and Redis had forgotten
            # its key (lost with the offer): the units this attempt has just reserved would
            # be held by nobody, for good. They go back, and the key names the order in the
            # same step, so that every later retry finds the order as this one does.
            await self._returns.release(stored, own=own)
            await self._stock_came_back(order.offer_id)
            if not same_terms:
                raise other_terms()
            return stored, False
        if fresh and not same_terms and stored.reservation_id != order.reservation_id:
            # An earlier attempt's order for other terms, its key forgotten by Redis: this
            # attempt's own units, reserved for terms no order has, go back. (On this
            # attempt's own reservation, the order is a retry's that was written first: the
            # units are its, and it is attached below like any other.)
            await self._returns.release(stored, own=own)
            await self._stock_came_back(order.offer_id)
            raise other_terms()
        if order.stock_build is not None and stored.stock_build != order.stock_build:
            # An earlier attempt's order, made on a stock since lost, is to hold this one's
            # units: noted held by this one's stock, as a round would (late_orders.py), not
            # counted with late orders. Before the attach, so that a note that fails is made
            # by the retry; and should that stock be lost meanwhile, the note names it alone.
            await self._orders.checked_after_rebuild([stored.id], order.stock_build)
        # Attached even when an earlier attempt wrote it: that attempt may have failed between
        # its write and its attach, and an unattached order would look orphaned to the reaper.
        if not await self._holds_its_units(stored):
            raise claim_expired()
        if created:
            await self._buyers.tell_created(stored)
        elif not same_terms:  # the reservation was the order's own: attached, then refused
            raise other_terms()
        return stored, created

    async def _holds_its_units(self, order: Order) -> bool:
        """Attach the order to its reservation. If the reaper, a rebuild or a settling gave its
        units back meanwhile, cancel it: no stock, no order."""
        if await self._attach(order) in (AttachOutcome.RELEASED, AttachOutcome.UNKNOWN):
            await self._cancel_lost(order)
            return False
        return True

    async def _attach(self, order: Order) -> AttachOutcome:
        """Name the order on its reservation. If Redis lost the offer meanwhile, the order's
        own rebuild decides whether it holds its units: a rebuild already under way elsewhere
        may have read the orders before this one landed, and would write the stock without it."""
        attach = functools.partial(
            self._stock.attach_order,
            order.offer_id,
            order.idempotency_key,
            order.id,
            quantity=order.quantity,
        )
        attached = await attach()
        if attached is not AttachOutcome.PAUSED:
            return attached
        if await self._returns.settled(order.offer_id):
            return AttachOutcome.RELEASED
        # Rebuilt from the orders, this one among them: either that rebuild counts it (the
        # attach finds it attached), or one that read the orders before it got in first
        # (the key is unknown, and the order cannot hold its units).
        await self._offer_service.rebuild(order.offer_id)
        attached = await attach()
        if attached is AttachOutcome.PAUSED:  # lost again: the retry attaches it
            raise Unavailable("the offer's stock is being restored, try again")
        return attached

    async def _stock_came_back(self, offer_id: str) -> None:
        # The room may have heard this claim's "1 left" before its order was written (see
        # claim): it hears the stock again. (An offer that has ended drops the figure.)
        self._offer_service.stock_moved(await self._launched.get(offer_id), None)

    async def _cancel_lost(self, order: Order) -> bool:
        """Cancel the order, whose reservation holds no units; whether this call did (the
        attempt that wrote it, or another process, may have). Units a retry in another process
        attached it to meanwhile go back all the same, and its key, which a rebuild may have
        missed, is kept naming it, for a retry to find. The room hears the stock again either
        way: it may have heard this claim's "1 left" before the order was written."""
        moved = False
        if order.status is OrderStatus.PENDING_PAYMENT:
            with contextlib.suppress(Conflict):  # moved meanwhile, or being moved right now
                await self._move(
                    order,
                    OrderStatus.CANCELLED,
                    by=SYSTEM,
                    reason="reservation lost",
                    units_to_return=True,
                )
                moved = True
        if moved:
            # The key kept alongside the give-back: under a Redis that hangs, the claim waits
            # out one deadline, not two (either order of the two scripts leaves the same stock).
            await self._give_back_then_tell(order, also=self._keep_key(order))
        else:
            await self._keep_key(order)
        await self._stock_came_back(order.offer_id)
        return moved

    async def _keep_key(self, order: Order) -> None:
        with contextlib.suppress(Unavailable):
            await self._stock.remember_released(order.offer_id, claim_of(order, held=False))

    async def _load_snapshot(self, offer_id: str) -> dict[str, Any]:
        offer = await self._launched.get(offer_id)
        return sold_product_to_wire(await self._products.get(offer.product_id))

    # Reading and cancelling --------------------------------------------------------------------

    async def get(self, order_id: str, who: Identity) -> Order:
        """The order for its buyer, the room's host or an admin; NotFound for anyone else."""
        order = await self._orders.get(order_id)
        if not may_see(order, who):
            raise NotFound(f"order {order_id} not found")
        return order

    async def list(
        self, who: Identity, *, room_id: str | None, limit: int, cursor: str | None = None
    ) -> Page[Order]:
        """A page of the caller's orders, or with `room_id` of the room's (its host or an
        admin; Forbidden for anyone else, NotFound for an unknown room), newest first.
        `cursor` is a page's `next_cursor`: the page after it (InvalidInput if it is not)."""
        if room_id is not None:  # who may list comes first, whatever the cursor
            ensure_can_manage(await self._rooms.get(room_id), who, "list its orders")
        # A cursor is the list's it came from: whose orders, or which room's.
        list_name = f"orders?buyer={who.user_id}" if room_id is None else f"orders?room={room_id}"
        after = None if cursor is None else decode_cursor(cursor, list_name)
        # One more than asked: whether it comes back tells whether there is a next page.
        if room_id is None:
            found = await self._orders.list_for_buyer(who.user_id, limit + 1, after=after)
        else:
            found = await self._orders.list_for_room(room_id, limit + 1, after=after)
        return page_of(found, limit, list_name)

    async def cancel(self, order_id: str, who: Identity) -> Order:
        """Cancel the buyer's order while it awaits payment. Sent again (the first answer was
        lost), or twice at once, it answers the order its buyer cancelled."""
        order = await self.get(order_id, who)
        if order.buyer_id != who.user_id:
            raise Forbidden("only the buyer can cancel an order")
        if cancelled_by(order, who.user_id):
            return order
        if order.status is not OrderStatus.PENDING_PAYMENT:
            raise not_cancellable(order)
        try:
            await self._move(
                order,
                OrderStatus.CANCELLED,
                by=who.user_id,
                reason="cancelled by buyer",
                units_to_return=True,
            )
        except Conflict:  # moved meanwhile: by this same cancel sent twice, or paid, or expired
            moved = await self._orders.get(order_id)
            if cancelled_by(moved, who.user_id):
                return moved
            raise not_cancellable(moved) from None
        if not await self._give_back_then_tell(order):
            log.warning("units_return_deferred", extra={"order_id": order.id})
        return order

    # Housekeeping, run by every process ----------------------------------------------------------

    async def expire_due(self) -> int:
        """Expire unpaid orders whose reservation ran out; exactly once across processes."""
        expired, giving_back = 0, True
        for order in await self._orders.due_to_expire(self._clock(), EXPIRY_BATCH):
            try:
                await self._move(
                    order,
                    OrderStatus.EXPIRED,
                    by=SYSTEM,
                    reason="not paid in time",
                    units_to_return=True,
                )
            except Conflict:
                continue  # paid, cancelled or expired by someone else meanwhile
            if giving_back and not await self._give_back_then_tell(order):
                # The stock is away: the rest of the batch need not wait for it in turn, their
                # notes say what is due.
                giving_back = False
                log.warning("units_return_deferred", extra={"order_id": order.id})
            expired += 1
        return expired

    async def _give_back_then_tell(
        self, order: Order, *, also: Awaitable[None] | None = None
    ) -> bool:
        """Give back the units of an order just cancelled or expired (with `also`, run
        alongside), then tell its buyer; whether the units went back. In this order: told
        first, a buyer who claims again at once was refused at a per-user limit the units still
        filled. When the stock is away the buyer is not told here either, rather than wait out
        a second deadline on a Redis that hangs: housekeeping does both (the move noted each),
        and the buyer who asked has the order in the answer."""
        if also is None:
            given_back = await self._returns.give_back(order)
        else:
            given_back, _ = await asyncio.gather(self._returns.give_back(order), also)
        if given_back:
            await self._buyers.tell_moved(order)
        return given_back

    async def return_units_due(self) -> int:
        """Finish the give-backs of cancelled and expired orders that failed (the stock was
        away) or never ran (the process died between the two writes); how many it finished."""
        return await self._returns.return_due()

    def recently_claimed_offers(self) -> builtins.list[str]:
        """Offers claimed through this process within the last hour (older ones are forgotten)."""
        horizon = self._clock() - RECENT_CLAIMS
        for offer_id, at in list(self._claimed_offers.items()):
            if at < horizon:
                del self._claimed_offers[offer_id]
        return list(self._claimed_offers)

    async def tell_untold_buyers(self) -> int:
        """Tell the buyers whose order changed while the broker was away (BuyerNotices)."""
        return await self._buyers.tell_untold()

    async def settle_late_orders(self) -> int:
        """Settle the orders written after the reaper released their reservation, or after a
        rebuild of their offer read its orders (any process, once a second; see late_orders.py):
        attached as any order, or, their units gone, cancelled. How many were cancelled."""
        return await self._late.settle()

    async def reap_orphans(self, offer_id: str) -> int:
        """Release reservations whose claimer died before writing the order (reaper.py)."""
        return await self._reaper.reap_orphans(offer_id)

    async def settle_due(self) -> int:
        """Settle the offers whose end was finished LATE_ORDERS ago (reaper.py)."""
        return await self._reaper.settle_due()

    async def _move(
        self,
        order: Order,
        to: OrderStatus,
        *,
        by: str,
        reason: str,
        units_to_return: bool = False,
    ) -> None:
        """Store the move; its caller tells the buyer (`BuyerNotices.tell_moved`), which the
        move noted as untold in the same write."""
        expected = order.status
        order.move(to, at=self._clock(), by=by, reason=reason)
        await self._orders.save_move(order, expected=expected, units_to_return=units_to_return)
