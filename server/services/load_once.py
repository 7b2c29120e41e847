"""Work that thousands of callers need at the same moment, done once for them all.

When a flash offer starts, every buyer's claim arrives in the same few milliseconds, all
needing the same offer. A plain cache misses for all of them at once and sends thousands of
identical reads to MongoDB. Here the first miss starts the load and everyone else waits for it
(`LoadOnce`, for values that never change once written). Likewise, when Redis loses an offer
mid-sale, every claim finds it lost at once, and each would rebuild it from all of its orders
(`CoalescedRuns`, for work whose result goes stale once done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LoadOnce(Generic[V]):
    def __init__(self, load: Callable[[str], Awaitable[V]], *, size: int) -> None:
        self._load = load
        self._size = size
        self._loads: dict[str, asyncio.Task[V]] = {}

    async def get(self, key: str) -> V:
        """The value for `key`; a failed load is not kept, so the next call tries again."""
        load = self._loads.get(key)
        if load is None:
            if len(self._loads) >= self._size:
                del self._loads[next(iter(self._loads))]  # the oldest
            load = self._loads[key] = asyncio.ensure_future(self._load(key))
            load.add_done_callback(lambda done: self._forget_failed(key, done))
        if load.done():  # nearly always: no need to wait, nor to shield
            return load.result()
        # Shielded: a caller that goes away must not cancel the load the others wait for.
        return await asyncio.shield(load)

    def _forget_failed(self, key: str, load: asyncio.Task[V]) -> None:
        failed = load.cancelled() or load.exception() is not None
        if failed and self._loads.get(key) is load:
            del self._loads[key]


class CoalescedRuns(Generic[V]):
    """Runs of `run(key)` for callers that each need one started after they asked (one that
    reads what is there when they ask, or later). The first caller starts a run; callers
    arriving while it is under way wait for the next one, which starts once it is over and
    serves them all. At most one run is under way and one waiting, per key."""

    def __init__(self, run: Callable[[str], Awaitable[V]]) -> None:
        self._run = run
        self._waiting: dict[str, asyncio.Task[V]] = {}
        self._running: dict[str, asyncio.Task[V]] = {}

    async def __call__(self, key: str) -> V:
        run = self._waiting.get(key)
        if run is None:
            run = self._waiting[key] = asyncio.ensure_future(self._next_run(key))
            run.add_done_callback(lambda over: self._over(key, over))
        # Shielded: a caller that goes away must not cancel the run the others wait for.
        return await asyncio.shield(run)

    async def _next_run(self, key: str) -> V:
        running = self._running.get(key)
        if running is not None:
            await asyncio.wait([running])  # over, however it ended
        this = self._waiting.pop(key)  # callers from now on need a run that starts later
        self._running[key] = this
        try:
            return await self._run(key)
        finally:
            if self._running.get(key) is this:
                del self._running[key]

    def _over(self, key: str, run: asyncio.Task[V]) -> None:
        # A run cancelled before its turn came (the loop shutting down) is still waiting: the
        # next call must not find it.
        if self._waiting.get(key) is run:
            del self._waiting[key]
        if not run.cancelled():
            run.exception()  # retrieved: its callers have heard it, if any was still there
