"""A bare keep-alive HTTP/1.1 client on asyncio.Protocol: cheap enough that the load generator
is never the limit."""

from __future__ import annotations

import asyncio
import collections
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


HOST = "127.0.0.1"
# Uvicorn closes a keep-alive connection after 5 s idle; like httpx's keepalive_expiry, the pool
# lets go of its own connections a little earlier instead of racing that close.
KEEPALIVE_EXPIRY_S = 4.0
MAX_RESENDS = 3


@dataclass(slots=True)
class HttpAnswer:
    status: int
    head: bytes
    body: bytes
    at_ns: int

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                return value.strip().decode()
        return None


class ClosedBeforeAnswer(ConnectionError):
    """The server closed an idle keep-alive connection (uvicorn: after 5 s) just as a request
    went out on it: nothing of the request was answered, so sending it again is safe."""


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time. Uvicorn answers these endpoints with
    Content-Length, which is all this parses: cheap enough that the generator is not the limit."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._answering = False  # some of the current request's answer has arrived
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            kind = ConnectionError if self._answering else ClosedBeforeAnswer
            waiter.set_exception(kind("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self._buf += data
        self._answering = True
        waiter = self._waiter
        end = self._buf.find(b"\r\n\r\n")
        if waiter is None or end < 0:
            return
        head = bytes(self._buf[:end])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            self._waiter = None
            waiter.set_exception(ValueError(f"no Content-Length: {head[:200]!r}"))
            assert self.transport is not None
            self.transport.close()
            return
        stop = lower.find(b"\r\n", at + 2)
        total = end + 4 + int(lower[at + 17 : stop if stop > 0 else len(lower)])
        if len(self._buf) < total:
            return
        body = bytes(self._buf[end + 4 : total])
        del self._buf[:total]
        self._waiter = None
        waiter.set_result(HttpAnswer(int(head[9:12]), head, body, now))

    def send(self, raw: bytes) -> asyncio.Future[HttpAnswer]:
        assert self._waiter is None, "one request at a time"
        assert self.transport is not None
        waiter: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._answering = bool(self._buf)
        self.transport.write(raw)
        return waiter


class HttpPool:
    """Up to `size` keep-alive connections; a request takes the idle one that waited longest or
    queues. A connection idle for KEEPALIVE_EXPIRY_S, or closed by the server, is dropped; a new
    one is opened only when a request is waiting and the pool is below `size` (the connect then
    counts in that request's latency). A request the server's close took down unanswered is
    sent again: claims carry their idempotency key, so a resend is safe, and what a client does."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.reconnects = 0
        self.resent = 0
        self._idle: collections.deque[HttpConn] = collections.deque()
        self._backlog: collections.deque[tuple[bytes, asyncio.Future[HttpAnswer], int]] = (
            collections.deque()
        )
        self._conns: list[HttpConn] = []
        self._live = 0  # connections open or opening
        self._tasks: set[asyncio.Task[None]] = set()

    async def _connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, self.port)), 30)
            _, conn = await loop.create_connection(HttpConn, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._conns.append(conn)
        return conn

    async def open(self) -> float:
        started = time.monotonic()
        for first in range(0, self.size, 200):
            batch = range(first, min(first + 200, self.size))
            self._idle.extend(await asyncio.gather(*(self._connect() for _ in batch)))
        self._live = len(self._idle)
        return time.monotonic() - started

    def submit(self, raw: bytes) -> asyncio.Future[HttpAnswer]:
        outer: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self._backlog.append((raw, outer, 0))
        self._pump()
        return outer

    def _pump(self) -> None:
        while self._backlog and self._idle:
            conn = self._idle.popleft()
            if conn.closed or time.monotonic() - conn.idle_since > KEEPALIVE_EXPIRY_S:
                self._drop(conn)
                continue
            raw, outer, sends = self._backlog.popleft()
            conn.send(raw).add_done_callback(partial(self._done, conn, raw, outer, sends))
        if self._backlog and self._live < self.size:
            self._grow()

    def _done(
        self,
        conn: HttpConn,
        raw: bytes,
        outer: asyncio.Future[HttpAnswer],
        sends: int,
        inner: asyncio.Future[HttpAnswer],
    ) -> None:
        error = inner.exception()
        if error is None:
            outer.set_result(inner.result())
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._drop(conn)
            if isinstance(error, ClosedBeforeAnswer) and sends < MAX_RESENDS:
                self.resent += 1
                self._backlog.appendleft((raw, outer, sends + 1))
            else:
                outer.set_exception(error)
        self._pump()

    def _drop(self, conn: HttpConn) -> None:
        self._live -= 1
        if conn.transport is not None:
            conn.transport.close()

    def _grow(self) -> None:
        async def connect() -> None:
            try:
                self._idle.append(await self._connect())
                self.reconnects += 1
            except BaseException:
                self._live -= 1
                raise
            self._pump()

        self._live += 1
        task = asyncio.create_task(connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for conn in self._conns:
            if conn.transport is not None:
                conn.transport.close()


def request_bytes(
    method: str, path: str, port: int, headers: dict[str, str], body: str = ""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
