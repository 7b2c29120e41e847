"""Once a second, in every process: end offers whose time is up or whose stock is gone, finish
ends left unfinished, withdraw offers whose launch died before counting them, tell rooms of
those whose launch died after counting them, expire unpaid orders, give back units a cancel or
an expiry could not, tell buyers of the order changes the broker could not, settle ended
offers, settle orders written after the reaper released their reservation, release
reservations whose claimer died, and forget the stock cadence of offers whose stock no longer
moves here. Sold-out offers and orphaned reservations are looked for in the offers this
process serves, each round, and in every running offer in turn. Each step is safe to run
everywhere at once: the stores' compare-and-set lets exactly one process act on each offer or
order, giving units back and stopping a stock are idempotent, and the room's stream drops a
second `offer.ended`.
It also tells the viewers of the rooms whose ends their processes stored untold (through a
gate, one process a room). And, given `check_redis`, it checks the stock's Redis again, in a
task beside the rounds (RedisChecks: its own cadence, once a minute after they have passed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from server.domain.errors import LiveshopError
from server.domain.offers import ORPHAN_AFTER
from server.metrics import Metrics
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.services.rooms import RoomService

log = logging.getLogger("liveshop.housekeeping")


class InTurn:
    """Ids read all at once, then handed out a share a round, so that each comes round once in
    `rounds` rounds; read again once all have been."""

    def __init__(self, read: Callable[[], Awaitable[list[str]]], rounds: int) -> None:
        self._read = read
        self._rounds = rounds
        self._left: list[str] = []
        self._share = 1

    async def next_share(self) -> list[str]:
        if not self._left:
            self._left = await self._read()
            self._share = max(1, math.ceil(len(self._left) / self._rounds))
        share, self._left = self._left[: self._share], self._left[self._share :]
        return share


class Housekeeper:
    def __init__(
        self,
        offers: OfferService,
        orders: OrderService,
        served_offer_ids: Callable[[], Iterable[str]],
        interval: float = 1.0,
        metrics: Metrics | None = None,
        rooms: RoomService | None = None,
        check_redis: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._offers = offers
        self._check_redis = check_redis  # None with stock in memory: nothing to check
        self._rooms = rooms  # None in tests of offers and orders alone
        # Its own when not given (tests), so that every round counts the same way.
        self._metrics = metrics or Metrics()
        self._orders = orders
        # Offers of the rooms this process has viewers of, and those it took claims for lately.
        self._served_offer_ids = served_offer_ids
        self._interval = interval
        # Every running offer, a share a round: each once per ORPHAN_AFTER (an offer launched
        # after the list was read waits for the next one, so two at most). When all the
        # processes that claimed for an offer have restarted and no viewer of its room is on
        # any, nothing else would release its orphans before it settles, maybe a day later.
        self._running = InTurn(
            offers.running_offer_ids, max(1, round(ORPHAN_AFTER.total_seconds() / interval))
        )
        self._task: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None  # the Redis check, beside the rounds

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="housekeeper")

    async def stop(self) -> None:
        for task in (self._task, self._checking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_once(self) -> None:
        if self._check_redis is not None and (self._checking is None or self._checking.done()):
            # A task of its own, one at a time, that no round waits for: a Redis that hangs
            # holds it for its whole deadline, and the rounds go on at their pace meanwhile.
            self._checking = asyncio.create_task(self._step("check_redis", self._check_redis))
        offer_ids = list(self._served_offer_ids())
        in_turn: list[str] = []
        await self._step("read_running_offers", partial(self._next_share, in_turn))
        await self._step("end_due_offers", self._offers.end_due)
        # Every running offer in turn too: one whose seller died after selling its last unit,
        # in a room nobody watches here, would otherwise run at 0 until its time is up.
        await self._step(
            "end_sold_out_offers", partial(self._offers.end_sold_out, [*offer_ids, *in_turn])
        )
        await self._step("finish_ends", self._offers.finish_ends)
        await self._step("withdraw_uncounted_launches", self._offers.withdraw_uncounted)
        await self._step("tell_untold_launches", self._offers.tell_untold_launches)
        if self._rooms is not None:
            await self._step("tell_untold_room_ends", self._rooms.tell_untold_ends)
        await self._step("expire_due_orders", self._orders.expire_due)
        await self._step("return_units", self._orders.return_units_due)
        await self._step("tell_untold_buyers", self._orders.tell_untold_buyers)
        await self._step("settle_offers", self._orders.settle_due)
        await self._step("settle_late_orders", self._orders.settle_late_orders)
        for offer_id in offer_ids:
            await self._step("reap_orphans", partial(self._orders.reap_orphans, offer_id))
        for offer_id in set(in_turn) - set(offer_ids):
            await self._step("reap_orphans", partial(self._orders.reap_orphans, offer_id))
        self._offers.forget_quiet_offers()

    async def _next_share(self, share: list[str]) -> None:
        share.extend(await self._running.next_share())

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:  # outside the steps: a bug, which must not end housekeeping
                log.exception("housekeeping_round_failed")

    async def _step(self, name: str, work: Callable[[], Awaitable[int | None]]) -> None:
        try:
            done = await work()
        except Exception as exc:  # a store hiccup must not stop the next round
            self._metrics.housekeeping_failures.labels(step=name).inc()
            if isinstance(exc, LiveshopError):  # a backend away, a race lost: next round
                log.warning("housekeeping_failed", extra={"step": name, "code": exc.code})
            else:  # a bug: its traceback is what will find it
                log.exception("housekeeping_failed", extra={"step": name})
            return
        if done:
            self._metrics.housekeeping_done.labels(step=name).inc(done)
