"""Once a second, in every process: end offers whose time is up or whose stock is gone, finish
ends left unfinished, withdraw offers whose launch died before counting them, expire unpaid
orders, give back units a cancel or an expiry could not, settle ended offers, release
reservations whose claimer died, and forget the stock cadence of offers whose stock no longer
moves here. Each step is safe to run everywhere at once: the stores' compare-and-set lets
exactly one process act on each offer or order, giving units back and stopping a stock are
idempotent, and the room's stream drops a second `offer.ended`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from server.domain.errors import LiveshopError
from server.services.offers import OfferService
from server.services.orders import OrderService

log = logging.getLogger("liveshop.housekeeping")


class Housekeeper:
    def __init__(
        self,
        offers: OfferService,
        orders: OrderService,
        open_offer_ids: Callable[[], Iterable[str]],
        interval: float = 1.0,
    ) -> None:
        self._offers = offers
        self._orders = orders
        self._open_offer_ids = open_offer_ids  # offers of the rooms this process serves
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="housekeeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_once(self) -> None:
        offer_ids = list(self._open_offer_ids())
        await self._step("end_due_offers", self._offers.end_due)
        await self._step("end_sold_out_offers", partial(self._offers.end_sold_out, offer_ids))
        await self._step("finish_ends", self._offers.finish_ends)
        await self._step("withdraw_uncounted_launches", self._offers.withdraw_uncounted)
        await self._step("expire_due_orders", self._orders.expire_due)
        await self._step("return_units", self._orders.return_units_due)
        await self._step("settle_offers", self._orders.settle_due)
        for offer_id in offer_ids:
            await self._step("reap_orphans", partial(self._orders.reap_orphans, offer_id))
        self._offers.forget_quiet_offers()

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()

    async def _step(self, name: str, work: Callable[[], Awaitable[object]]) -> None:
        try:
            await work()
        except LiveshopError as error:
            log.warning("housekeeping_failed", extra={"step": name, "code": error.code})
        except Exception as exc:  # a store hiccup must not stop the next round
            log.warning("housekeeping_failed", extra={"step": name, "error": type(exc).__name__})
