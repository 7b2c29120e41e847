"""Another server process whose Redis or MongoDB connection fails or lags when a test says:
for the races between a lost stock, its rebuilds and the offer's end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Unavailable, Unresponsive
from server.domain.offers import AttachOutcome, FlashOffer, RecoveredClaim
from server.ports import OfferStore
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.stock_port import StockReservations
from tests.unit.services.shop import HOST, Shop, other_process


class FlakyStock:
    """The shop's own reservations, seen through a connection that can be cut; and, once, a
    rebuild by another process that read the orders before a cancel lands first."""

    def __init__(self, shared: MemoryStockReservations) -> None:
        self._shared = shared
        self.away = False
        self.unresponsive = False  # every call runs out the deadline
        self.away_for: set[str] = set()  # offer ids whose calls fail
        self.releases_failing = 0  # the next releases to fail, whatever else goes through
        self.remembers_failing = 0  # likewise, keys of lost orders to remember
        self.stale_rebuild: list[RecoveredClaim] | None = None
        self.before_rebuild: Callable[[], Awaitable[object]] | None = None  # once
        self.before_release: Callable[[], Awaitable[object]] | None = None  # each release

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def release(
        self,
        offer_id: str,
        idempotency_key: str,
        *,
        orphan_only: bool = False,
        for_order: str | None = None,
        reservation_id: str | None = None,
    ) -> bool:
        if self.before_release is not None:
            await self.before_release()
        self._check(offer_id)
        if self.releases_failing:
            self.releases_failing -= 1
            raise Unavailable("live data is unreachable, try again")
        return await self._shared.release(
            offer_id,
            idempotency_key,
            orphan_only=orphan_only,
            for_order=for_order,
            reservation_id=reservation_id,
        )

    async def remember_released(self, offer_id: str, claim: RecoveredClaim) -> bool:
        self._check(offer_id)
        if self.remembers_failing:
            self.remembers_failing -= 1
            raise Unavailable("live data is unreachable, try again")
        return await self._shared.remember_released(offer_id, claim)

    async def attach_order(
        self, offer_id: str, idempotency_key: str, order_id: str, *, quantity: int | None = None
    ) -> AttachOutcome:
        self._check(offer_id)
        return await self._shared.attach_order(
            offer_id, idempotency_key, order_id, quantity=quantity
        )

    async def stop(self, offer_id: str, *, sold_out: bool = False) -> int | None:
        self._check(offer_id)
        return await self._shared.stop(offer_id, sold_out=sold_out)

    async def rebuild(self, offer_id: str, *, claims: list[RecoveredClaim], **offer: Any) -> bool:
        if self.before_rebuild is not None:
            happening, self.before_rebuild = self.before_rebuild, None
            await happening()
        if self.stale_rebuild is not None:
            await self._shared.rebuild(offer_id, claims=self.stale_rebuild, **offer)
            self.stale_rebuild = None
        return await self._shared.rebuild(offer_id, claims=claims, **offer)

    def _check(self, offer_id: str) -> None:
        if self.unresponsive:
            raise Unresponsive("live data is unreachable, try again")
        if self.away or offer_id in self.away_for:
            raise Unavailable("live data is unreachable, try again")


def flaky(shop: Shop) -> tuple[FlakyStock, OfferService, OrderService]:
    stock = FlakyStock(shop.stock)
    offers, orders = other_process(shop, stock=cast(StockReservations, stock))
    return stock, offers, orders


class OffersAwayAfter:
    """The shop's offer store, for a process whose database goes away once `away` is set."""

    def __init__(self, shared: OfferStore) -> None:
        self._shared = shared
        self.away = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def get(self, offer_id: str) -> FlashOffer:
        if self.away:
            raise Unavailable("the database is unreachable, try again")
        return await self._shared.get(offer_id)

    get_latest = get


async def rebuild_that_read_the_offer_before_its_stop(
    shop: Shop, offer: FlashOffer, *, rebuilt_meanwhile: bool
) -> None:
    """A process's rebuild of the lost offer reads it running. Before it writes the stock,
    another process rebuilds it (`rebuilt_meanwhile`), the host's stop finds whatever stock is
    there (perhaps none), and Redis loses it again. Then this process's database goes away
    before it can read the offer again: its rebuild answers Unavailable."""
    stock, offers_store = FlakyStock(shop.stock), OffersAwayAfter(shop.offers_store)
    offers, _ = other_process(
        shop, stock=cast(StockReservations, stock), offers_store=cast(OfferStore, offers_store)
    )

    async def stopped_and_lost_again() -> None:
        if rebuilt_meanwhile:
            await shop.offers.rebuild(offer.id)
        await shop.offers.stop(offer.id, HOST)
        shop.stock.flush()
        offers_store.away = True

    stock.before_rebuild = stopped_and_lost_again
    with pytest.raises(Unavailable):
        await offers.rebuild(offer.id)
