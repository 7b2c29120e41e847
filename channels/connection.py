"""One viewer's websocket as the hub sees it: frames go straight to the socket when nothing
waits before them (channels/direct_send.py), else into a bounded queue that one writer task
drains through ASGI.

Pushing a frame never blocks, so a viewer whose network is slow can never slow the room. A
viewer is too slow when its queue is full while the writer waits for the socket to take more
(the transport paused writing); it is closed with TOO_SLOW and reconnects with `since`. The
frames it was started with (hello, and the events a reconnect missed) do not count: catching up
is no sign of a slow client. A close after the queued frames (a ban, the room's end) waits for
them CLOSE_TIMEOUT_SECONDS at most. If even the close cannot be written, the endpoint serving
it is told to give up on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from channels.close_codes import CloseCode
from channels.direct_send import DirectSocket, send_now
from server.domain.identity import Identity

log = logging.getLogger("liveshop.ws")

# A close handshake with a client that has stopped reading must not hang around forever.
CLOSE_TIMEOUT_SECONDS = 5.0
CLAIMS_HEARD = 16  # a socket's latest claims whose orders it hears past its token's expiry
# Frames queued while the writer has not yet had its turn (a burst from the broker, a history
# fill) are no sign of a slow client; only this many times the limit is, whatever the reason.
BURST_ALLOWANCE = 8


class FrameSender(Protocol):
    """The websocket as far as sending goes (starlette's WebSocket fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Connection:
    __slots__ = (
        "_closer",
        "_closing",
        "_direct",
        "_fill_left",
        "_flush_deadline",
        "_leave_with",
        "_on_overflow",
        "_queue",
        "_ready",
        "_sender",
        "_waiting_on_socket",
        "_writer",
        "batched",
        "carrying_out",
        "claimed",
        "closed",
        "conn_id",
        "endpoint",
        "evicted",
        "identity",
        "limit",
        "room_id",
        "token_expires",
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
        batched: bool = False,
        direct: DirectSocket | None = None,
        token_expires: float | None = None,
    ) -> None:
        self.conn_id = conn_id
        # Epoch seconds (None: no token, or none that ends). The socket's rights end then, and
        # with them the user's private frames (see Hub.on_user_frame); it may go on watching.
        self.token_expires = token_expires
        # Its latest claims (offer, key): their orders' private frames reach it even once its
        # token has expired, since the claims were taken while it held (see `hears`).
        self.claimed: deque[tuple[str, str]] | None = None
        self.batched = batched  # takes room events in `batch` frames (see the hub)
        self.identity = identity
        self.room_id = room_id
        self.limit = limit
        self.closed = False
        # The task serving this socket, and whether we gave up on it (see _close).
        self.endpoint: asyncio.Task[Any] | None = None
        self.evicted = False
        self._sender = sender
        self._direct = direct  # the same socket, for writes that skip ASGI (direct_send.py)
        self._on_overflow = on_overflow
        # Allocated while there is something to send: most viewers are idle most of the time.
        self._queue: deque[str] | None = None
        self._ready = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._closing: tuple[CloseCode, str] | None = None
        # A frame being carried out (`carrying_out`) owes its answer: a drain's close waits
        # for it (`close_when_answered`), as `_leave_with`.
        self.carrying_out = False
        self._leave_with: tuple[CloseCode, str] | None = None
        self._flush_deadline: asyncio.TimerHandle | None = None
        self._waiting_on_socket = False
        # Frames of `start` (hello, a reconnect's missed events) still queued: catching up on
        # a long absence is no sign of a slow client, so they do not count against `limit`.
        self._fill_left = 0

    def token_holds_at(self, now: float) -> bool:
        """Whether its token, if any, has yet to expire at `now` (epoch seconds)."""
        return self.token_expires is None or now < self.token_expires

    def note_claim(self, offer_id: str, idempotency_key: str) -> None:
        if self.claimed is None:
            self.claimed = deque(maxlen=CLAIMS_HEARD)
        self.claimed.append((offer_id, idempotency_key))

    def hears(self, private_frame: str, now: float) -> bool:
        """Whether its user's private frame is its to hear: while its token holds, and after,
        an order it claimed (`order.updated`: a key is the client's, one per offer)."""
        if self.token_holds_at(now):
            return True
        if not self.claimed:
            return False
        order = json.loads(private_frame).get("order")
        if not isinstance(order, dict):
            return False
        return (order.get("offer_id"), order.get("idempotency_key")) in self.claimed

    @property
    def closing(self) -> bool:
        """Closed, or to close once what is queued has gone (banned, the room ended, a drain):
        what it sends is no longer carried out, since no answer would reach it."""
        return self.closed or self._closing is not None or self._leave_with is not None

    @property
    def leaving(self) -> bool:
        """To close as soon as the frame being carried out is answered (`close_when_answered`)."""
        return self._leave_with is not None

    def close_when_answered(self, code: CloseCode, reason: str) -> None:
        """Close once the frame being carried out is answered (a claim whose order is being
        written: closed first, its buyer would never hear of it), at once if none is. Frames
        it sends meanwhile are not carried out."""
        if self.carrying_out:
            self._leave_with = (code, reason)
        else:
            self.close_after_flush(code, reason)

    def answered(self) -> None:
        """The frame being carried out is answered: a close waiting for that goes on."""
        self.carrying_out = False
        if self._leave_with is not None:
            self.close_after_flush(*self._leave_with)

    def push(self, text: str) -> None:
        """Send one frame now if nothing waits before it, else queue it; never blocks. Frames
        pushed before `start` wait for it."""
        if self.closed or self._closing is not None:
            return
        queued = 0 if self._queue is None else len(self._queue) - self._fill_left
        if queued >= self.limit and (
            self._waiting_on_socket or queued >= self.limit * BURST_ALLOWANCE
        ):
            self._on_overflow(self)
            self.abort(CloseCode.TOO_SLOW, "too slow: reconnect with since")
            return
        if self._queue is None:
            # Nothing waits to go first (a writer keeps its deque, even empty, until its last
            # send is done): once hello has gone, the frame can go straight to the socket, with
            # no writer task. That is what most viewers need for a room event.
            direct = self._direct
            if self._ready and direct is not None and send_now(direct, text):
                return
            self._queue = deque()
        self._queue.append(text)
        if self._ready and self._writer is None:
            self._writer = asyncio.create_task(self._write())

    def start(self, first: Iterable[str]) -> None:
        """Send `first` (hello and recovered frames) ahead of anything queued meanwhile."""
        if self.closed:
            return
        queue = deque(first)
        self._fill_left = len(queue)
        if self._queue:
            queue.extend(self._queue)
        self._queue = queue
        self._ready = True
        self._writer = asyncio.create_task(self._write())

    def close_after_flush(self, code: CloseCode, reason: str) -> None:
        """Close once the frames already queued are sent (room.ended, user.banned). Before
        `start`, the close waits for it too: hello goes first, and one writer sends both."""
        if self.closed or self._closing is not None:
            return
        self._closing = (code, reason)
        # A peer that has stopped reading would hold the close, and its place in the room,
        # for as long as its network kept the connection: the flush has a deadline too.
        self._flush_deadline = asyncio.get_running_loop().call_later(
            CLOSE_TIMEOUT_SECONDS, self.abort, code, reason
        )
        if self._ready and self._writer is None:
            self._writer = asyncio.create_task(self._write())

    def abort(self, code: CloseCode | int, reason: str) -> None:
        """Drop whatever is queued and close now."""
        if self.closed:
            return
        self._stop_flush_deadline()
        self.closed = True
        self._queue = None
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def finish(self) -> None:
        """Stop the writer when the socket is gone (the endpoint calls this on disconnect)."""
        self._stop_flush_deadline()
        self.closed = True
        self._queue = None
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    async def _write(self) -> None:
        """Send until the queue is empty, then end: an idle viewer holds no task at all."""
        try:
            while self._queue:
                # Only while this await is pending can push() run: if it runs then, the
                # socket is not taking frames as fast as the room makes them.
                self._waiting_on_socket = True
                text = self._queue.popleft()
                self._fill_left = max(self._fill_left - 1, 0)
                await self._sender.send_text(text)
                self._waiting_on_socket = False
            self._queue = None
            if self._closing is not None:
                self._stop_flush_deadline()
                self.closed = True
                await self._close(*self._closing)
        except asyncio.CancelledError:
            raise
        except Exception:  # the peer went away mid-send; the endpoint cleans up
            self.closed = True
        finally:
            self._writer = None

    def _stop_flush_deadline(self) -> None:
        if self._flush_deadline is not None:
            self._flush_deadline.cancel()
            self._flush_deadline = None

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self._sender.close(code, reason), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            # The peer reads nothing, not even a close frame: stop serving the socket. The
            # server closes it on its side, and the kernel's TCP_USER_TIMEOUT drops it.
            self.evicted = True
            if self.endpoint is not None and not self.endpoint.done():
                self.endpoint.cancel()
        except Exception:  # noqa: S110 - already gone is as good as closed
            pass
