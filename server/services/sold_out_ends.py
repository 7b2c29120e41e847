"""Sold-out offers whose seller did not end them: housekeeping's part of who ends a sold-out
offer (the claim that sells the last unit ends it at once, see StockAnnouncer)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from server.domain.errors import OfferPaused, Unavailable
from server.domain.offers import SKEW_MARGIN, EndReason, FlashOffer
from server.ports import OfferStore
from server.stock_port import StockReservations


class SoldOutEnds:
    def __init__(
        self,
        offers: OfferStore,
        stock: StockReservations,
        clock: Callable[[], datetime],
        *,
        end: Callable[[FlashOffer, EndReason], Awaitable[FlashOffer | None]],
        rebuild: Callable[[str], Awaitable[None]],
    ) -> None:
        """`end` an offer (OfferService.end: None when it did not); `rebuild` an offer's stock
        that Redis lost."""
        self._offers = offers
        self._stock = stock
        self._clock = clock
        self._end = end
        self._rebuild = rebuild
        self._seen_ended: set[str] = set()  # sold out and ended, as a round found
        self._sold_out_last_round: set[str] = set()

    async def end_sold_out(self, offer_ids: Iterable[str]) -> int:
        """End the running offers among these whose stock is gone into orders. The claim that
        sells the last unit ends its offer at once, unless a reservation has no order yet (its
        claimer may have died: its units would come back); this catches those, and an offer
        whose seller died, shut down or failed first, a round after it first finds the offer
        sold out with every reservation in an order: ended at once, it could overtake the
        seller's "1 left". Each process runs it once a second for the offers it serves and a
        share of the others: one stock read each, and more only when the stock is gone. One
        found sold out is looked at again next round, in that round's share or not."""
        seen_last_round, self._sold_out_last_round = self._sold_out_last_round, set()
        offer_ids = list(dict.fromkeys([*offer_ids, *seen_last_round]))
        self._seen_ended &= set(offer_ids)  # forgotten once it leaves the list: bounded
        ended = 0
        for offer_id in offer_ids:
            if offer_id in self._seen_ended or not await self._sold_out(offer_id):
                continue
            self._sold_out_last_round.add(offer_id)
            if offer_id not in seen_last_round:
                continue  # its seller's end has this round to come
            offer = await self._offers.get(offer_id)
            if offer.end_reason is None:
                if await self._end(offer, EndReason.SOLD_OUT) is None:
                    # A unit came back (or another process ended it): should it sell out again,
                    # its seller has a round to end it, as the first time.
                    self._sold_out_last_round.discard(offer_id)
                    continue
                ended += 1
            self._seen_ended.add(offer_id)
        return ended

    async def _sold_out(self, offer_id: str) -> bool:
        """Whether the offer's stock is gone, every unit of it in an order."""
        try:
            if await self._stock.remaining(offer_id) != 0:
                return False
            # A unit reserved but not yet in an order may still come back (its claimer died:
            # the reaper gives it back); once written, a later round ends it.
            pending = await self._stock.pending_without_order(offer_id, self._clock() + SKEW_MARGIN)
        except OfferPaused:
            # Redis lost the offer, and nothing may ask for it again (no claim comes to a
            # sold-out offer): rebuilt here, and read again next round.
            with contextlib.suppress(Unavailable):
                await self._rebuild(offer_id)
            return False
        except Unavailable:
            return False
        return not pending
