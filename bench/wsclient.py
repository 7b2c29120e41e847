"""A bare websocket client on `asyncio.Protocol`, cheap enough to run thousands in one process.

The load generator must not be the bottleneck, so this skips everything a general client does
(no per-connection task, no message queue, no UTF-8 check): it parses server frames straight out
of `data_received` and hands each text payload, as bytes, to `on_text` with one clock reading per
read. Two flavours sit on top: Liveshop's JSON frames and socket.io over engine.io v4.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, cast

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DEFLATE_TAIL = b"\x00\x00\xff\xff"

# (client, payload, clock in ns) for every application message after the handshake.
EventHandler = Callable[["WsClient", bytes, int], None]


def _ignore(client: WsClient, payload: bytes, now: int) -> None:
    return None


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class HandshakeError(ConnectionError):
    pass


class WsClient(asyncio.Protocol):
    """One websocket. `ready` resolves when the application says hello; `closed` with the code."""

    def __init__(self, host: str, port: int, path: str, *, deflate: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.offer_deflate = deflate
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.on_event: EventHandler = _ignore
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.count = 0  # application messages counted by on_event handlers
        self.frames = 0
        self.bytes_in = 0
        self._handshaking = True
        self._buf = b""
        self._fragments: list[bytes] = []
        self._fragment_deflated = False
        self._inflate: Any = None  # zlib decompress object once deflate is negotiated
        self._key = base64.b64encode(os.urandom(16)).decode()

    # asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.offer_deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError(f"closed {self.close_code}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.bytes_in += len(data)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            self._handshake(data[:end])
            data = data[end + 4 :]
        self._frames(data, now)

    # Frames -----------------------------------------------------------------------------------

    def _handshake(self, head: bytes) -> None:
        status, *headers = head.decode("latin-1").split("\r\n")
        if " 101 " not in status + " ":
            self.ready.set_exception(HandshakeError(status))
            assert self.transport is not None
            self.transport.close()
            return
        self._handshaking = False
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self._inflate = zlib.decompressobj(wbits=-15)

    def _frames(self, data: bytes, now: int) -> None:
        pos, size = 0, len(data)
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = (data[pos + 2] << 8) | data[pos + 3], 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", data, pos + 2)[0], 10
            end = pos + head + length
            if end > size:
                break
            payload = data[pos + head : end]
            pos = end
            self.frames += 1
            opcode = b0 & 0x0F
            if opcode in (OP_TEXT, OP_BINARY):
                if b0 & 0x80:
                    if b0 & 0x40:
                        payload = self._inflate.decompress(payload + DEFLATE_TAIL)
                    self.on_text(payload, now)
                else:
                    self._fragments, self._fragment_deflated = [payload], bool(b0 & 0x40)
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    if self._fragment_deflated:
                        whole = self._inflate.decompress(whole + DEFLATE_TAIL)
                    self.on_text(whole, now)
            elif opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._send_frame(OP_CLOSE, payload[:2])
                assert self.transport is not None
                self.transport.close()
                return
        if pos < size:
            self._buf = data[pos:]

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        transport.write(header + key + _mask(payload, key))

    # For subclasses and users -----------------------------------------------------------------

    def on_text(self, payload: bytes, now: int) -> None:
        self.on_event(self, payload, now)

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode())

    def close(self, code: int = 1000) -> None:
        self._send_frame(OP_CLOSE, struct.pack("!H", code))
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class LiveshopClient(WsClient):
    """Liveshop's room socket: ready on the `hello` frame; every other frame is an event."""

    def __init__(
        self,
        host: str,
        port: int,
        room_id: str,
        token: str | None,
        *,
        deflate: bool = False,
        batch: bool = False,
    ) -> None:
        query = [f"token={token}"] if token else []
        if batch:
            query.append("batch=1")  # room events gathered into `batch` frames
        path = f"/ws/rooms/{room_id}" + ("?" + "&".join(query) if query else "")
        super().__init__(host, port, path, deflate=deflate)

    def on_text(self, payload: bytes, now: int) -> None:
        if not self.ready.done() and payload.startswith(b'{"type":"hello"'):
            self.ready.set_result(None)
            return
        self.on_event(self, payload, now)

    def chat(self, text: str, client_id: str) -> None:
        self.send_text(
            json.dumps(
                {"type": "chat.send", "text": text, "client_id": client_id},
                separators=(",", ":"),
                ensure_ascii=False,
            )
        )


class SocketIOClient(WsClient):
    """socket.io v5 over engine.io v4, websocket transport only: answer pings, join with auth."""

    def __init__(self, host: str, port: int, auth: dict[str, str]) -> None:
        super().__init__(host, port, "/socket.io/?EIO=4&transport=websocket")
        self._auth = json.dumps(auth, separators=(",", ":"))

    def on_text(self, payload: bytes, now: int) -> None:
        if payload[:2] == b"42":
            self.on_event(self, payload, now)
        elif payload == b"2":
            self.send_text("3")  # engine.io pong
        elif payload[:1] == b"0":
            self.send_text("40" + self._auth)  # engine.io open: connect to namespace "/"
        elif payload[:2] == b"40":
            if not self.ready.done():
                self.ready.set_result(None)
        elif payload[:2] == b"44" and not self.ready.done():
            self.ready.set_exception(HandshakeError(payload.decode(errors="replace")))

    def chat(self, text: str, client_id: str) -> None:
        body = {"text": text, "client_id": client_id}
        self.send_text("42" + json.dumps(["chat", body], separators=(",", ":"), ensure_ascii=False))


async def open_client(
    client: WsClient, *, rcvbuf: int | None = None, limit_s: float = 30.0
) -> None:
    """Connect `client` and wait for its application hello. A tiny `rcvbuf` makes a stalled
    reader fill up after a few kilobytes instead of megabytes of kernel buffer."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (client.host, client.port)), limit_s)
        await loop.create_connection(lambda: client, sock=sock)
    except BaseException:
        sock.close()
        raise
    await asyncio.wait_for(asyncio.shield(client.ready), limit_s)
