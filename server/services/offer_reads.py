"""The offers as they are read: one, or a room's, each with its stock; and their figures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from server.domain.errors import Unavailable
from server.domain.figures import OfferFigures, RoomFigures
from server.domain.offers import FlashOffer, StockFigure
from server.ports import OfferStore, OrderStore, RoomStore
from server.stock_port import StockReservations

ROOM_OFFERS_LIMIT = 500  # a room's offers listed, and counted in the host's figures


class OfferReads:
    """Mixed into the OfferService, which provides these."""

    _offers: OfferStore
    _orders: OrderStore
    _rooms: RoomStore
    _stock: StockReservations
    rebuild: Callable[[str], Awaitable[None]]

    async def view(self, offer_id: str) -> tuple[FlashOffer, StockFigure | None]:
        """The offer and its stock (None while the stock is being rebuilt)."""
        return await self._with_stock(await self._offers.get(offer_id))

    async def _with_stock(self, offer: FlashOffer) -> tuple[FlashOffer, StockFigure | None]:
        if (at_end := offer.remaining_at_end()) is not None:
            return offer, StockFigure(at_end, None)
        try:
            if not await self._stock.is_ready(offer.id):
                await self.rebuild(offer.id)
            return offer, await self._stock.figure(offer.id)
        except Unavailable:
            return offer, None

    async def in_room(self, room_id: str) -> list[tuple[FlashOffer, StockFigure | None]]:
        """The offers the room has run and runs, newest first (its latest ROOM_OFFERS_LIMIT), each
        with its stock; NotFound for a room that does not exist. Offers whose launch has not
        counted them yet are left out, as the room is not shown them either."""
        offers = await self._offers.in_room(room_id, ROOM_OFFERS_LIMIT)
        if not offers:
            await self._rooms.get(room_id)  # none yet, or no such room
        return await self._all_with_stock(reversed(offers))

    async def open_in_room(self, room_id: str) -> list[tuple[FlashOffer, StockFigure | None]]:
        """The room's offers that have not ended, as the room is shown them: counted ones."""
        return await self._all_with_stock(await self._offers.open_in_room(room_id))

    async def _all_with_stock(
        self, offers: Iterable[FlashOffer]
    ) -> list[tuple[FlashOffer, StockFigure | None]]:
        """The counted ones, as just read, each with its stock: read together (an ended
        offer's is on the offer itself)."""
        return list(
            await asyncio.gather(*(self._with_stock(offer) for offer in offers if offer.counted))
        )

    async def figures_in_room(self, room_id: str) -> RoomFigures:
        """Orders, units and paid figures of each offer the room has run, its latest
        ROOM_OFFERS_LIMIT (a show that ran more is an exception, and its running offers matter
        most), and of every offer, for the room's totals: those agree with its orders."""
        offers = await self._offers.in_room(room_id, ROOM_OFFERS_LIMIT)
        every_offer = await self._orders.figures_in_room(room_id)
        by_id = {figures.offer_id: figures for figures in every_offer}
        listed = [by_id.get(offer.id) or OfferFigures(offer.id) for offer in offers]
        return RoomFigures(listed, every_offer)
