"""A websocket test client for the room protocol, on the `websockets` asyncio client.

A background task reads every frame as soon as it arrives (so this client is never the slow
consumer) into `frames`, the full record, and into a queue that `recv` consumes in order. When
the server closes the socket, `close_code` says how.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]
DEFAULT_TIMEOUT = 5.0


class Closed(Exception):
    """The socket closed before the frame asked for arrived."""

    def __init__(self, code: int | None, reason: str | None, seen: list[Frame]) -> None:
        super().__init__(f"socket closed with {code} ({reason!r}); last frames: {seen[-5:]}")
        self.code = code
        self.reason = reason


class WsClient:
    def __init__(self, conn: ClientConnection, name: str) -> None:
        self.name = name
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._conn = conn
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._done = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=f"ws-client-{name}")

    @classmethod
    async def connect(cls, url: str, *, name: str = "client", **options: Any) -> WsClient:
        conn = await connect(url, open_timeout=10, proxy=None, compression=None, **options)
        return cls(conn, name)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def _read(self) -> None:
        try:
            async for message in self._conn:
                frame = json.loads(message)
                self.frames.append(frame)
                self._queue.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.wait_closed(), 10)
            self.close_code = self._conn.close_code
            self.close_reason = self._conn.close_reason
            self._done.set()
            self._queue.put_nowait(None)

    # -- sending ------------------------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        await self._conn.send(json.dumps(frame, ensure_ascii=False))

    async def chat(self, text: str, client_id: str | None = None) -> None:
        await self.send({"type": "chat.send", "text": text, "client_id": client_id or text[:64]})

    # -- receiving ----------------------------------------------------------------------------

    async def recv(self, seconds: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame not yet consumed; Closed when the socket closed first."""
        try:
            frame = await asyncio.wait_for(self._queue.get(), max(seconds, 0.01))
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: no frame within {seconds}s; last frames: {self.frames[-5:]}"
            ) from None
        if frame is None:
            self._queue.put_nowait(None)  # stays closed for later calls
            raise Closed(self.close_code, self.close_reason, self.frames)
        return frame

    async def recv_until(self, kind: str, seconds: float = DEFAULT_TIMEOUT) -> Frame:
        """Consume frames until one of type `kind` arrives, and return it."""
        return await self.recv_match(lambda frame: frame.get("type") == kind, seconds)

    async def recv_match(
        self, predicate: Callable[[Frame], bool], seconds: float = DEFAULT_TIMEOUT
    ) -> Frame:
        deadline = time.monotonic() + seconds
        while True:
            frame = await self.recv(max(0.0, deadline - time.monotonic()))
            if predicate(frame):
                return frame

    async def hello(self, seconds: float = DEFAULT_TIMEOUT) -> Frame:
        frame = await self.recv(seconds)
        assert frame.get("type") == "hello", f"{self.name}: first frame is not hello: {frame}"
        return frame

    async def wait_seen(
        self, predicate: Callable[[Frame], bool], seconds: float = DEFAULT_TIMEOUT
    ) -> Frame:
        """The first frame received so far or within `seconds` that matches; consumes nothing."""
        deadline = time.monotonic() + seconds
        checked = 0
        while True:
            for frame in self.frames[checked:]:
                if predicate(frame):
                    return frame
            checked = len(self.frames)
            if self.closed or time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no matching frame (closed={self.close_code}); "
                    f"last frames: {self.frames[-5:]}"
                )
            await asyncio.sleep(0.02)

    async def wait_chat(self, client_ids: Iterable[str], seconds: float = 10.0) -> None:
        """Wait until chat messages with all these client ids have arrived."""
        wanted = set(client_ids)

        def all_here(_: Frame) -> bool:
            return wanted <= {str(f.get("client_id")) for f in self.chat_messages()}

        try:
            await self.wait_seen(all_here, seconds)
        except TimeoutError:
            have = {str(f.get("client_id")) for f in self.chat_messages()}
            raise TimeoutError(
                f"{self.name}: missing chat {sorted(wanted - have)[:10]} after {seconds}s "
                f"(closed={self.close_code})"
            ) from None

    async def wait_closed(self, seconds: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait for the server to close the socket; the close code it sent."""
        try:
            await asyncio.wait_for(self._done.wait(), seconds)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name}: still open after {seconds}s; last frames: {self.frames[-5:]}"
            ) from None
        return self.close_code

    def room_events(self) -> list[Frame]:
        """Every room event received so far (frames with a seq), in arrival order."""
        return [f for f in self.frames if f.get("type") != "hello" and "seq" in f]

    def chat_messages(self) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == "chat.message"]

    def last_seq(self) -> int:
        """The newest seq this client holds: from the last room event, else from hello."""
        for frame in reversed(self.frames):
            if "seq" in frame:
                return int(frame["seq"])
        raise AssertionError(f"{self.name} has no seq yet")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.close(), 5)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def close_all(clients: Iterable[WsClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


async def connect_closed_code(
    url: str, seconds: float = DEFAULT_TIMEOUT
) -> tuple[int | None, Frame | None]:
    """Connect, and return the close code the server sends and the first frame, if any."""
    client = await WsClient.connect(url, name="refused")
    try:
        code = await client.wait_closed(seconds)
        return code, (client.frames[0] if client.frames else None)
    finally:
        await client.close()


def chat_id_is(client_id: str) -> Callable[[Frame], bool]:
    """A predicate: the chat message sent with this client id."""

    def matches(frame: Frame) -> bool:
        return frame.get("type") == "chat.message" and frame.get("client_id") == client_id

    return matches


def assert_contiguous(frames: list[Frame], after: int, who: str) -> None:
    """Room events numbered after+1, after+2, ... with no gap, repeat or reordering."""
    seqs = [int(f["seq"]) for f in frames]
    expected = list(range(after + 1, after + 1 + len(seqs)))
    assert seqs == expected, f"{who}: room event seqs {seqs} are not contiguous after {after}"
