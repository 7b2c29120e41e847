"""Background work nobody awaits: kept referenced until it is done, its unexpected failures
logged, and stopped when its owner closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from server.logs import warn_if_failed

T = TypeVar("T")


class BackgroundTasks:
    def __init__(self, logger: logging.Logger, failure_event: str) -> None:
        self._logger = logger
        self._failure_event = failure_event
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finishing: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        task.add_done_callback(warn_if_failed(self._logger, self._failure_event))
        return task

    def finish_on_close(self, task: asyncio.Task[Any]) -> None:
        """close() waits for this task rather than cancel it: work that must not stop halfway."""
        if task in self._tasks:
            self._finishing.add(task)

    async def close(self) -> None:
        """Cancel every task but those to finish, and wait for them all."""
        for task in self._tasks - self._finishing:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._finishing.discard(task)
