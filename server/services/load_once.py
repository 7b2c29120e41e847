"""A bounded cache for values that never change once written, loaded once per key.

When a flash offer starts, every buyer's claim arrives in the same few milliseconds, all
needing the same offer. A plain cache misses for all of them at once and sends thousands of
identical reads to MongoDB. Here the first miss starts the load and everyone else waits for it.
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
