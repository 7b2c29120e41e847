"""A hostile websocket client against the real app on uvicorn with the server's own protocols
(server/ws_protocol.py): handshakes websockets cannot parse, ping floods, a client gone before
hearing why it was refused, a `ref` that cannot be written back."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

import pytest
import websockets

from server.ws_protocol import PING_BURST
from tests.integration.channels.live import Live, recv, recv_type

_UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nHost: x\r\n"
)


async def _handshake(
    live: Live, path: bytes, extra: bytes = b"", then: bytes = b"", upgrade: bytes = _UPGRADE
) -> bytes:
    """A raw upgrade request for `path` (and `then`, sent after it); what the server answers
    before it closes."""
    address = urlsplit(live.ws)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(b"GET " + path + b" HTTP/1.1\r\n" + upgrade + extra + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(then)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "extra", "status"),
    [
        pytest.param(b"/ws/rooms/r_x?token=" + b"a" * 9000, b"", b"431", id="a line over 8 KB"),
        pytest.param(
            b"/ws/rooms/r_x",
            b"".join(b"x-%d: y\r\n" % n for n in range(130)),
            b"431",
            id="over 128 headers",
        ),
        pytest.param(b"/ws/rooms/r_x", b"Content-Length: 2\r\n", b"400", id="a body"),
    ],
)
async def test_a_handshake_websockets_cannot_parse_is_answered_and_closed(
    live: Live, path: bytes, extra: bytes, status: bytes
) -> None:
    answer = await _handshake(live, path, extra)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
    assert b"application/problem+json" in answer
    if status == b"431":  # websockets' own bounds, not HTTP's 32 KB
        assert b"longer than 8192 bytes, or there are more than 128 headers" in answer


_BARE_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        pytest.param(
            b"Sec-WebSocket-Version: 99\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "Sec-WebSocket-Version",
            id="another version",
        ),
        pytest.param(b"Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Key", id="no key"),
        pytest.param(
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n",
            "Sec-WebSocket-Key",
            id="a bad key",
        ),
    ],
)
async def test_a_handshake_websockets_refuses_is_answered_as_a_problem(
    live: Live, headers: bytes, named: str
) -> None:
    answer = await _handshake(live, b"/ws/rooms/r_x", upgrade=_BARE_UPGRADE + headers)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (400, "invalid_handshake")
    assert named in problem["detail"], problem


@pytest.mark.parametrize(
    "path", [b"/ws/rooms/a%2Fb", b"/ws/rooms/", b"/ws/rooms/a/b", b"/ws/other", b"/api/v1/rooms"]
)
async def test_a_handshake_for_no_socket_is_not_found(
    live: Live, path: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Not 403 `forbidden`, which says the client lacks a right (Starlette's close); and no
    ERROR in the log, which anyone could fill so."""
    with caplog.at_level(logging.ERROR):
        head, _, body = (await _handshake(live, path)).partition(b"\r\n\r\n")
        await asyncio.sleep(0.05)  # the server's task ends after the answer
    assert head.startswith(b"HTTP/1.1 404 "), head
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["code"] == "not_found"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_refused_handshake_is_answered_once_whatever_follows(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        answer = await _handshake(live, b"/ws/rooms/r_x", b"Content-Length: 2\r\n", then=b"{}" * 50)
    assert answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_ping_flood_is_closed_with_1008(live: Live) -> None:
    async with websockets.connect(live.url()) as ws:
        await recv(ws)  # hello
        for n in range(int(PING_BURST) * 3):
            try:
                await ws.ping(str(n))
            except websockets.ConnectionClosed:
                break
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008


async def test_a_few_pings_are_answered(live: Live) -> None:
    async with websockets.connect(live.url()) as ws:
        await recv(ws)
        for n in range(5):
            await asyncio.wait_for(await ws.ping(str(n)), 5)  # its pong came back


async def test_a_client_gone_before_hearing_why_it_was_refused_is_no_error(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    address = urlsplit(live.ws)
    with caplog.at_level(logging.ERROR):
        for _ in range(20):
            _, writer = await asyncio.open_connection(address.hostname, address.port)
            writer.write(b"GET /ws/rooms/r_nope HTTP/1.1\r\n" + _UPGRADE + b"\r\n")
            await writer.drain()
            writer.close()
        await asyncio.sleep(0.5)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_ref_that_is_not_text_is_not_echoed_and_the_socket_still_hears(
    live: Live,
) -> None:
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)  # hello
        await ws.send('{"type": "ping", "ref": "\\ud83d"}')  # half an emoji, as JSON allows
        # Room frames (the once-a-second viewer count) may come between: skipped.
        refused = await recv_type(ws, "error")  # a string that is not text: frame refused
        assert refused["code"] == "invalid_frame"
        # Not echoed: a strict JSON parser would refuse the error that explains the mistake.
        assert refused["ref"] is None
        json.dumps(refused, ensure_ascii=False).encode()  # a frame of text: no lone surrogate
        await ws.send(json.dumps({"type": "ping", "ref": "r2"}))
        assert (await recv_type(ws, "pong")).get("ref") == "r2"  # the socket still hears


async def test_a_refused_handshake_names_at_most_300_characters_of_what_was_sent(
    live: Live,
) -> None:
    key = b"A" * 5000 + b"\t" + b"B" * 10
    headers = b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
    answer = await _handshake(live, b"/ws/rooms/r_x", upgrade=_BARE_UPGRADE + headers)
    problem = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert problem["code"] == "invalid_handshake"
    assert len(problem["detail"]) <= 301
    assert "\t" not in problem["detail"]
