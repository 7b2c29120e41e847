"""How the server reads a request off the wire (server/http_head.py), on a real uvicorn with the
server's own protocol and a tiny app: a head's size is bound however its bytes are split into
reads, a request that does not arrive whole in time is answered 408 and let go, and a refusal
is answered in its turn among pipelined requests."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from server import http_head
from server.http_head import MAX_AFTER_HEAD_BYTES, MAX_HEAD_BYTES
from tests.integration.channels.live import serving

READ_SECONDS = 1.0  # the deadline in these tests


async def _ok(request: Request) -> Response:
    return Response("ok")


async def _echo(request: Request) -> Response:
    try:
        return Response(await request.body())
    except ClientDisconnect:  # as server/http/deps.py's read_body: a client gone is no crash
        request.app.state.gone.set()
        return Response(status_code=400)


async def _items(request: Request) -> Response:
    """POST adds an item (as a claim creates an order); GET lists them, one a line."""
    items: list[bytes] = request.app.state.items
    if request.method == "POST":
        items.append(await request.body())
        return Response("created", status_code=201)
    return Response(b"\n".join(items))


async def _answers_before_the_body(request: Request) -> Response:
    return Response("early")


async def _echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


@pytest.fixture
def app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/ok", _ok),
            Route("/echo", _echo, methods=["POST"]),
            Route("/early", _answers_before_the_body, methods=["POST"]),
            Route("/items", _items, methods=["GET", "POST"]),
            WebSocketRoute("/ws", _echo_socket),
        ]
    )
    app.state.items, app.state.gone = [], asyncio.Event()
    return app


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch, app: Starlette) -> AsyncIterator[int]:
    monkeypatch.setattr(http_head, "READ_SECONDS", READ_SECONDS)
    async with serving(app) as port:
        yield port


async def _send(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts`, each in one write (`pause` seconds apart), then read until the server
    closes the connection; what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:  # refused midway: what came before the reset is all there is
        return b""
    finally:
        writer.close()


def _status_and_code(answer: bytes) -> tuple[int, str | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    is_problem = b"content-type: application/problem+json" in head.lower()
    return status, json.loads(body)["code"] if is_problem else None


def _answers(stream: bytes) -> list[tuple[int, str | None, bytes]]:
    """Each answer in `stream`, in order (each with a Content-Length): status, problem code,
    body."""
    answers = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        found = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert found is not None, stream
        body, stream = rest[: int(found[1])], rest[int(found[1]) :]
        answers.append((*_status_and_code(head + b"\r\n\r\n" + body), body))
    return answers


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /" + b"r" * 40_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", id="request line"),
        pytest.param(
            b"GET /ok HTTP/1.1\r\nhost: x\r\nx-a: " + b"a" * 40_000 + b"\r\n\r\n", id="header"
        ),
        pytest.param(
            b"GET /ok HTTP/1.1\r\n"
            + b"".join(b"x-%d: %s\r\n" % (n, b"a" * 60) for n in range(600))
            + b"\r\n",
            id="many headers",
        ),
        pytest.param(
            b"GET /" + b"r" * 80_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", id="beyond httptools' URL"
        ),
    ],
)
async def test_a_head_too_large_in_one_read_is_refused_as_one_that_trickles(
    port: int, head: bytes
) -> None:
    assert len(head) > MAX_HEAD_BYTES
    assert _status_and_code(await _send(port, head)) == (431, "headers_too_large")


async def test_a_head_just_within_the_bound_goes_through(port: int) -> None:
    head = (
        b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-a: " + b"a" * 30_000 + b"\r\n\r\n"
    )
    assert _status_and_code(await _send(port, head)) == (200, None)


async def test_a_head_read_behind_a_large_body_is_not_taken_for_a_large_head(port: int) -> None:
    # The 40 KB body and the start of the next head arrive in one read: the bound is the
    # head's, not the read's.
    body = b"x" * 40_000
    first = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    second = b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    answers = _answers(await _send(port, first + second[:10], second[10:], pause=0.1))
    assert [answer[:2] for answer in answers] == [(200, None), (200, None)]


async def test_pipelined_heads_within_the_bound_are_not_summed_into_one(port: int) -> None:
    # Each head is bound, not the heads a read holds: 30 pipelined GETs of 1.3 KB (40 KB in
    # all, within the pipelining bound), a read ending within the last; and a 30 KB head
    # followed by a part of a 4 KB one.
    small = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 1_300 + b"\r\n\r\n"
    last = b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    stream = small * 30 + last
    assert len(stream) > MAX_HEAD_BYTES
    answers = _answers(await _send(port, stream[:-20], stream[-20:], pause=0.1))
    assert [answer[:2] for answer in answers] == [(200, None)] * 31
    large = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-a: " + b"a" * 30_000 + b"\r\n\r\n"
    answers = _answers(await _send(port, large + last[:20], last[20:], pause=0.1))
    assert [answer[:2] for answer in answers] == [(200, None), (200, None)]


@pytest.mark.parametrize("split", [20_000, 33_000], ids=["in two reads", "then its end"])
async def test_a_head_too_large_behind_a_pipelined_request_is_refused(
    port: int, split: int
) -> None:
    # However the head's bytes arrive, also behind another request in the same read.
    first = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    head = b"GET /ok HTTP/1.1\r\nhost: x\r\nx-a: " + b"a" * 33_000 + b"\r\n\r\n"
    answers = _answers(await _send(port, first + head[:split], head[split:], pause=0.1))
    assert [answer[:2] for answer in answers] == [(200, None), (431, "headers_too_large")]


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([], id="nothing after connecting"),
        pytest.param([b"GET /ok HTTP/1.1\r\n", b"host: x\r\n"], id="a head never finished"),
        pytest.param(
            [b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n", b"{}"],
            id="a body short of its length",
        ),
    ],
)
async def test_a_request_not_whole_in_time_is_answered_408_and_let_go(
    port: int, parts: list[bytes]
) -> None:
    answer = await _send(port, *parts, pause=0.1)  # read until closed (5 s at most)
    assert _status_and_code(answer) == (408, "request_timeout")


async def test_a_request_trickling_in_after_an_answered_one_hears_its_408(port: int) -> None:
    answer = await _send(port, b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\nGET /ok HTTP/1.1\r\n")
    first, _, second = answer.partition(b"ok")
    assert _status_and_code(first) == (200, None)
    assert _status_and_code(second) == (408, "request_timeout")


async def test_the_deadline_is_each_requests_not_the_connections(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(4):  # over three deadlines in all, each request within its own
            writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
            await asyncio.sleep(READ_SECONDS * 0.3)
            writer.write(b"{}")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert await reader.readexactly(2) == b"{}"
            await asyncio.sleep(READ_SECONDS * 0.6)  # idle: the keep-alive timeout's time
    finally:
        writer.close()


async def test_an_answer_given_before_the_body_is_not_followed_by_a_408(port: int) -> None:
    answer = await _send(port, b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert _status_and_code(answer) == (200, None)


async def test_a_websocket_is_not_timed_as_a_request(port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await asyncio.sleep(READ_SECONDS * 2)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"


GARBAGE = b"GARBAGE\r\n\r\n"


async def test_a_request_before_bad_bytes_is_answered_before_the_400(port: int) -> None:
    # A claim and junk in one packet: the claim is carried out, so its client must hear its
    # 201, not only a 400 it would take for the claim's own answer (and buy again).
    claim = b"POST /items HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\n\r\nclaim-1"
    answers = _answers(await _send(port, claim + GARBAGE))  # read until closed
    assert [answer[:2] for answer in answers] == [(201, None), (400, "malformed_request")]
    listed = await _send(port, b"GET /items HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert _answers(listed) == [(200, None, b"claim-1")]


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(GARBAGE, id="a bad head"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            id="a request queued behind them with a bad chunk",
        ),
    ],
)
async def test_pipelined_requests_are_answered_in_order_before_the_400(
    port: int, refused: bytes
) -> None:
    first = b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n"
    second = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nsecond"
    answers = _answers(await _send(port, first + second + refused))
    assert answers[:2] == [(200, None, b"ok"), (200, None, b"second")]
    assert [answer[:2] for answer in answers[2:]] == [(400, "malformed_request")]


async def test_requests_sent_far_ahead_of_their_answers_are_refused_not_queued(port: int) -> None:
    """One read of requests back to back: uvicorn queued each of them (750 MB in 3 s from one
    client). Those within the bound are answered in order, then the next is refused, and the
    connection closes: nothing more of the read is taken."""
    flood = b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n" * 5_000
    answers = _answers(await _send(port, flood))
    kept = http_head.MAX_PIPELINED + 1  # the one answered first, and those queued behind it
    assert [answer[:2] for answer in answers] == [(200, None)] * kept + [
        (429, "too_many_pipelined_requests")
    ]


async def test_requests_within_the_pipelining_bound_are_all_answered(port: int) -> None:
    batch = b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n" * http_head.MAX_PIPELINED
    last = b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    answers = _answers(await _send(port, batch + last))
    assert [answer[:2] for answer in answers] == [(200, None)] * (http_head.MAX_PIPELINED + 1)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"POST /ok HTTP/1.1\r\n", id="an app that answers at once"),
        pytest.param(b"POST /echo HTTP/1.1\r\n", id="an app that reads the body"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nexpect: 100-continue\r\n", id="a body to be continued"
        ),
    ],
)
async def test_a_bad_chunk_refuses_its_own_request_without_an_error_in_the_log(
    port: int, head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    head += b"host: x\r\ntransfer-encoding: chunked\r\n\r\n"
    answers = await _send(port, head + b"zz\r\n")  # read until closed: what the app sent too
    assert [answer[:2] for answer in _answers(answers)] == [(400, "malformed_request")]
    assert not _errors(caplog)


async def test_the_app_of_a_request_refused_midway_hears_the_client_gone(
    port: int, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Told only when the connection closes, the app would wait until then for a body that will
    # not come; the connection is kept open long here, so only a disconnect told with the 400 is
    # heard while it is.
    monkeypatch.setattr(http_head, "LINGER_SECONDS", 60.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # the app is reading the body when its bad chunk comes
        writer.write(b"zz\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 400 ")
        await asyncio.wait_for(app.state.gone.wait(), 5)
    finally:
        writer.close()


CHUNKED = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"


def _in_parts(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


@pytest.mark.parametrize(
    "after_head",
    [
        pytest.param(
            b"2\r\n{}\r\n0\r\nx-trailer: " + b"a" * 2 * MAX_AFTER_HEAD_BYTES, id="a trailer"
        ),
        pytest.param(
            b"2;e=" + b"a" * 2 * MAX_AFTER_HEAD_BYTES + b"\r\n{}\r\n0\r\n\r\n",
            id="a chunk extension",
        ),
        pytest.param(b"1\r\na\r\n" * (2 * MAX_AFTER_HEAD_BYTES // 6), id="a byte a chunk"),
    ],
)
async def test_what_follows_a_head_is_bound_whatever_its_framing(
    port: int, after_head: bytes
) -> None:
    """The body the app reads is bound (64 KB), but a trailer httptools kept whole, copying it
    at each read, and a chunk extension it dropped, went on as long as the client sent them.
    (The bound is checked after each read: a request may go a read past it.)"""
    answer = await _send(port, CHUNKED, *_in_parts(after_head))
    assert _status_and_code(answer) == (413, "payload_too_large")


async def test_a_chunked_body_with_framing_and_trailers_within_the_bound_goes_through(
    port: int,
) -> None:
    body = b"x" * 60_000
    chunks = b"".join(b"%x;n=1\r\n%s\r\n" % (len(part), part) for part in _in_parts(body, 10))
    trailers = b"0\r\nx-checksum: " + b"c" * 1_000 + b"\r\n\r\n"
    closing = CHUNKED.replace(b"host: x\r\n", b"host: x\r\nconnection: close\r\n")
    answers = _answers(await _send(port, closing, *_in_parts(chunks + trailers)))
    assert answers == [(200, None, body)]
