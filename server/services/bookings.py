"""A product's stock, shared by its flash offers: booking a launch, counting it, the seller's
stock counts, and withdrawing launches that died before they were counted.

Each offer books units of its product's stock (`units_booked`). Launches of one product are
checked one at a time: each offer is stored as its product's nth, and of two launches that read
the same n, one is refused the place and checks again. A launch and a stock count made at the
same moment see each other through the product's launch count: a launch counts its offer once
it is stored, only if the stock still covers what the offers book with it, and a count stores
its figure only if no launch counted itself since it read the bookings.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from server.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    LaunchKeyTaken,
    LaunchWithdrawn,
    LiveshopError,
    ProductOffersChanged,
)
from server.domain.identity import Identity, Role
from server.domain.offers import FlashOffer, ensure_stock_left, units_booked
from server.domain.products import Product
from server.ports import OfferStore, OrderStore, ProductStore
from server.services.rooms import ensure_seller
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.offers")

# Launches of one product that lose the race for its next place, before the host hears 409.
LAUNCH_TRIES = 5
# How long a stored offer may wait for its launch to count it before housekeeping takes it for
# one whose launch died: far above a launch's few round trips, each bounded at 5 s.
UNCOUNTED_AFTER = timedelta(seconds=30)
UNCOUNTED_BATCH = 100
_LAUNCHES_RACING = "offers of this product are being launched at once, try again"
_WITHDRAWN = "the offer was withdrawn before its launch finished: launch it again"


class Withdraw(Protocol):
    """Stops an offer whose launch is refused after it was stored, and frees its launch key;
    with `if_uncounted`, only if its launch has not counted it. Whether it ended it."""

    async def __call__(self, offer: FlashOffer, *, if_uncounted: bool = False) -> bool: ...


class ProductBookings:
    def __init__(
        self,
        offers: OfferStore,
        orders: OrderStore,
        products: ProductStore,
        stock: StockReservations,
        withdraw: Withdraw,
    ) -> None:
        self._offers = offers
        self._orders = orders
        self._products = products
        self._stock = stock
        self._withdraw = withdraw

    async def book(self, offer: FlashOffer, product: Product, launch_key: str | None) -> FlashOffer:
        """Store the offer and count it if the product's stock still has its quantity once the
        product's other offers have taken theirs, and return it; or the offer stored under
        `launch_key`, when the same launch sent at the same moment got in first."""
        for attempt in range(LAUNCH_TRIES):
            if attempt:  # a count may have changed the stock too
                product = await self._products.get(product.id)
            others = await self._offers.of_product(product.id)
            booked = await self.units_booked(others)
            ensure_stock_left(product, offer.quantity, booked=booked)
            # Stock first: an offer in the store without stock would answer `paused` and
            # rebuild. Opening it again on a second try changes nothing.
            await self._stock.open_offer(
                offer.id,
                quantity=offer.quantity,
                per_user_limit=offer.per_user_limit,
                starts_at=offer.starts_at,
                ends_at=offer.ends_at,
            )
            try:
                await self._offers.create(
                    offer, nth_of_product=len(others) + 1, launch_key=launch_key
                )
            except (LaunchKeyTaken, ProductOffersChanged):
                # Another launch got in first: this same one, sent twice at once, or another
                # offer of the product, whose booking the next try counts.
                if launch_key is not None:
                    taken = await self._offers.by_launch_key(offer.room_id, launch_key)
                    if taken is not None:
                        return taken
                continue
            await self._count(offer, at_least=booked + offer.quantity, fresh=True)
            return offer
        raise ProductOffersChanged(_LAUNCHES_RACING)

    async def count_again(self, offer: FlashOffer, launch_key: str) -> None:
        """Count a stored offer again, for its launch sent again: the first attempt may have
        died between storing and counting it, and a stock count may have missed it since.
        Counted again (harmless if it was), it must fit what the product's offers book with
        it, as a counted one always does. If it ended meanwhile, the launch answers it as it
        is now, unless it was withdrawn (its key freed): then it is LaunchWithdrawn."""
        booked = await self.units_booked(await self._offers.of_product(offer.product_id))
        if await self._count(offer, at_least=booked, fresh=False):
            return
        named = await self._offers.by_launch_key(offer.room_id, launch_key)
        if named is None or named.id != offer.id:
            raise LaunchWithdrawn(_WITHDRAWN)

    async def _count(self, offer: FlashOffer, *, at_least: int, fresh: bool) -> bool:
        """Count the stored offer as launched if the product's stock still covers `at_least`
        units (what its offers book with it), else withdraw it. Counted only once stored, so a
        stock count either sees its booking or finds the count changed and reads again.
        Whether it had not ended: a new launch's offer (`fresh`, which nobody has heard of
        yet) that ended before this could note it counted is LaunchWithdrawn."""
        try:
            counted = await self._products.count_launch(offer.product_id, at_least=at_least)
        except LiveshopError:
            if fresh:  # uncounted, it could meet a count that never saw it: it must not sell
                await self._withdraw(offer)
            raise  # a launch sent again leaves its offer as it was: it may be selling
        if not counted:
            # A count set a lower stock after the launch checked it, and before its own check
            # could see this offer: the offer does not fit, and must not sell.
            await self._withdraw(offer)
            raise Conflict(
                "the product's stock was lowered while this offer was launched: launch it again",
                code="stock_changed",
            )
        if await self._offers.launch_counted(offer.id):  # the room may be shown it now
            return True
        if not fresh:  # the host may have stopped it: it keeps its key (see count_again)
            return False
        # Ended meanwhile (withdrawn, or its time ran out): its key goes too, so that the
        # launch sent again is tried afresh.
        await self._withdraw(offer)
        raise LaunchWithdrawn(_WITHDRAWN)

    async def withdraw_uncounted(self, now: datetime) -> int:
        """Withdraw the offers whose launch died between storing and counting them (each
        process calls this once a second). Hidden from the room, such an offer would still book
        its quantity until its end, and a stock count made meanwhile may not have seen it. A
        launch sent again with its key before this counts it instead (`count_again`)."""
        uncounted = await self._offers.uncounted_launches(now - UNCOUNTED_AFTER, UNCOUNTED_BATCH)
        withdrawn = 0
        for offer in uncounted:
            # Unless its launch counts it first: then that launch answers, and it stays.
            if await self._withdraw(offer, if_uncounted=True):
                log.warning("uncounted_launch_withdrawn", extra={"offer_id": offer.id})
                withdrawn += 1
        return withdrawn

    async def units_booked(self, offers: list[FlashOffer]) -> int:
        settled = [offer.id for offer in offers if offer.settled_at is not None]
        figures = await self._orders.figures_of_offers(settled) if settled else []
        return units_booked(offers, {f.offer_id: f.held_units for f in figures})

    async def set_stock(self, who: Identity, product_id: str, stock: int) -> Product:
        """A restock or a count: the units the seller has, and no fewer than the product's
        offers have booked (those may be sold already: stop an offer first). Later launches
        book out of the new figure."""
        ensure_seller(who, "change stock")
        product = await self._products.get(product_id)
        if product.owner_id != who.user_id and who.role is not Role.ADMIN:
            raise Forbidden("only the product's seller can change its stock")
        if stock < 0:
            raise InvalidInput("stock cannot be negative", code="invalid_stock")
        for attempt in range(LAUNCH_TRIES):
            if attempt:
                product = await self._products.get(product_id)
            # The launch count is read before the bookings: a launch stored after it counts
            # itself after that, so set_stock finds the count changed and this reads again.
            booked = await self.units_booked(await self._offers.of_product(product_id))
            if stock < booked:
                units = "unit" if booked == 1 else "units"
                raise Conflict(
                    f"the product's offers have booked {booked} {units}: set at least {booked}"
                    " (an offer books its quantity while it runs, then what it took)",
                    code="stock_booked",
                )
            try:
                return await self._products.set_stock(product_id, stock, launches=product.launches)
            except ProductOffersChanged:
                continue  # an offer was launched meanwhile: count its booking too
        raise ProductOffersChanged(_LAUNCHES_RACING)
