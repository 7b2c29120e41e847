"""One viewer's websocket as the hub sees it: a bounded queue of frames and one writer task.

The hub only ever appends to the queue, so a viewer whose network is slow can never slow the
room. When the queue overflows, the viewer is closed with TOO_SLOW and reconnects with `since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from channels.close_codes import CloseCode
from server.domain.identity import Identity

log = logging.getLogger("liveshop.ws")

# A close handshake with a client that has stopped reading must not hang around forever.
CLOSE_TIMEOUT_SECONDS = 5.0


class FrameSender(Protocol):
    """The websocket as far as sending goes (starlette's WebSocket fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Connection:
    __slots__ = (
        "_closing",
        "_on_overflow",
        "_queue",
        "_ready",
        "_sender",
        "_wake",
        "_writer",
        "closed",
        "conn_id",
        "identity",
        "limit",
        "room_id",
    )

    def __init__(
        self,
        conn_id: str,
        identity: Identity,
        room_id: str,
        sender: FrameSender,
        *,
        limit: int,
        on_overflow: Callable[[Connection], None],
    ) -> None:
        self.conn_id = conn_id
        self.identity = identity
        self.room_id = room_id
        self.limit = limit
        self.closed = False
        self._sender = sender
        self._on_overflow = on_overflow
        self._queue: deque[str] = deque()
        self._ready = False
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing: tuple[CloseCode, str] | None = None

    def push(self, text: str) -> None:
        """Queue one frame; never blocks. Frames queued before `start` wait for it."""
        if self.closed or self._closing is not None:
            return
        if len(self._queue) >= self.limit:
            self._on_overflow(self)
            self.abort(CloseCode.TOO_SLOW, "too slow: reconnect with since")
            return
        self._queue.append(text)
        if self._ready:
            self._wake.set()

    def start(self, first: Iterable[str]) -> None:
        """Send `first` (hello and recovered frames) ahead of anything queued meanwhile."""
        self._queue.extendleft(reversed(list(first)))
        self._ready = True
        self._wake.set()
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{self.conn_id}")

    def close_after_flush(self, code: CloseCode, reason: str) -> None:
        """Close once the frames already queued are sent (room.ended, user.banned)."""
        if self.closed or self._closing is not None:
            return
        self._closing = (code, reason)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{self.conn_id}")
        self._wake.set()

    def abort(self, code: CloseCode | int, reason: str) -> None:
        """Drop whatever is queued and close now."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def finish(self) -> None:
        """Stop the writer when the socket is gone (the endpoint calls this on disconnect)."""
        self.closed = True
        self._queue.clear()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                queue = self._queue
                while queue:
                    await self._sender.send_text(queue.popleft())
                if self._closing is not None:
                    code, reason = self._closing
                    self.closed = True
                    await self._close(code, reason)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            self.closed = True

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._sender.close(code, reason), CLOSE_TIMEOUT_SECONDS)
