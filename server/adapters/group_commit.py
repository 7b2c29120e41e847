"""Group commit: calls that arrive while a batch is on its way go together in the next one.

In a flash sale hundreds of claims arrive in the same millisecond. For each round trip to
Redis or MongoDB the client library spends more CPU (redis-py, PyMongo) than the server spends
on the work it carries, so a store hands every call made while its previous round trip was in
flight to a single next one.

Nothing waits for a timer. A lone call goes out at once (one event-loop turn later), and under
load a batch holds whatever arrived during the previous round trip. A call therefore waits at
most one round trip longer than it would alone, and the number of round trips per second stays
bounded by the store's latency rather than by the arrival rate.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from server.domain.errors import Unavailable

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

# One result per item, in order; an item's result may be an exception, raised to its caller.
Write = Callable[[K, list[T]], Awaitable[Sequence[R | Exception]]]

MAX_BATCH = 500
# A batch's error that says the store is away or hangs, rather than anything about the batch.
STORE_AWAY = (Unavailable, TimeoutError)


class GroupCommit(Generic[K, T, R]):
    """Runs `write(key, items)` for batches of items submitted under the same key.

    `write` must return one result per item, in order; an exception among them is raised to that
    item's caller alone. If `write` raises, every caller in the batch gets the error; if the
    store was away or did not answer in time (Unavailable, TimeoutError), so does every call
    queued behind the batch, which would otherwise wait out another deadline of its own on a
    store that hangs. Batches
    for one key run one after another, in the order the calls were made; different keys run
    side by side.
    """

    def __init__(self, write: Write[K, T, R], *, max_batch: int = MAX_BATCH) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queues: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._drains: set[asyncio.Task[None]] = set()

    async def submit(self, key: K, item: T) -> R:
        """The result of `item`'s write. A caller cancelled before its batch goes takes its item
        back; once the batch is on its way, the item is written anyway, like a request sent."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
            drain = asyncio.create_task(self._drain(key, queue))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        queue.append((item, future))
        return await future

    async def wait_idle(self) -> None:
        """Wait until every batch submitted so far has been written (before closing a client)."""
        while self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)

    async def _drain(self, key: K, queue: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            while queue:
                batch = [entry for entry in queue[: self._max_batch] if not entry[1].cancelled()]
                del queue[: self._max_batch]
                error = await self._run(key, batch) if batch else None
                if isinstance(error, STORE_AWAY):
                    for _, future in queue:
                        if not future.done():
                            future.set_exception(own_copy(error))
                    queue.clear()
        finally:
            # Single-threaded: nothing can be appended between the empty check and this.
            del self._queues[key]
            for _, future in queue:  # only when cancelled mid-way (shutdown)
                future.cancel()

    async def _run(self, key: K, batch: list[tuple[T, asyncio.Future[R]]]) -> Exception | None:
        """Write the batch and hand out its results; the error when `write` raised."""
        try:
            results = await self._write(key, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(own_copy(error))
            return error
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        return None


def own_copy(error: Exception) -> Exception:
    """A copy of a batch's error for one caller, caused by the original: each caller raises it
    in its own task, and one shared object would collect all of their tracebacks."""
    try:
        mine = copy.copy(error)
    except Exception:  # an exception type that cannot be copied: share it
        return error
    mine.__cause__ = error
    return mine
