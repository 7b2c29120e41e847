"""A viewer that stops reading is cut off with 4008; the room, and every other viewer, goes on.

The server runs with a send queue of 16 frames. The slow viewer's socket has a 4 KB receive
buffer and its client stops reading, so the server's writes to it back up: first the kernel
buffers, then the send queue. The server's kernel send buffer alone autotunes up to 4 MB
(net.ipv4.tcp_wmem), about 2000 chat messages of the largest size, while one connection may send
only 20 frames a second. So the bulk comes from pinning a product with big image URLs (about
20 KB per `showcase.pinned`), one request after another, while a chatter sends big messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.api import create_live_room, http, make_token, metric, unique
from tests.e2e.conftest import Cluster
from tests.e2e.processes import LiveshopProcess
from tests.e2e.wsclient import Frame, WsClient, assert_contiguous, close_all

SLOW_METRIC = "liveshop_ws_slow_consumer_disconnects_total"
CONNECTIONS_METRIC = "liveshop_ws_connections"
BIG_TEXT = "\N{GRINNING FACE}" * 480  # 480 characters, 1920 bytes of UTF-8
MAX_PINS = 1000  # 20 MB: far past any buffer, and inside the room history configured below
CHAT_INTERVAL = 1 / 15  # under the per-connection frame limit (20 per second)


@pytest.fixture(scope="module")
def server(cluster: Cluster) -> Iterator[LiveshopProcess]:
    env = cluster.env(
        LIVESHOP_SEND_QUEUE_FRAMES="16",
        LIVESHOP_CHAT_BURST="10000",
        LIVESHOP_CHAT_PER_SECOND="10000",
        LIVESHOP_HISTORY_EVENTS="5000",
    )
    with LiveshopProcess(env, name="slow") as process:
        yield process


async def _stalled_client(url: str, port: int) -> ClientConnection:
    """A websocket whose reader stalls: a 4 KB receive buffer and a one-message queue."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await connect(
        url, sock=sock, max_queue=1, ping_interval=None, proxy=None, compression=None
    )


async def _read_to_the_end(
    conn: ClientConnection, seconds: float
) -> tuple[list[Frame], int | None]:
    """Everything still on its way to the stalled client, then the close code the server sent
    (1006 when it dropped the connection without one; None when still open after `seconds`)."""
    frames: list[Frame] = []
    try:
        async with asyncio.timeout(seconds):
            async for message in conn:
                frames.append(json.loads(message))
            await conn.wait_closed()
    except ConnectionClosed:
        await conn.wait_closed()
    except TimeoutError:
        return frames, None
    return frames, conn.close_code


async def _big_product(base_url: str, host: str) -> str:
    images = [f"https://img.example/{i}/{'x' * 1950}.jpg" for i in range(10)]
    async with http(base_url, host) as client:
        response = await client.post(
            "/products",
            json={
                "title": "Big picture",
                "price": {"amount": "10.00", "currency": "USD"},
                "stock": 5,
                "images": images,
            },
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _flood_until_one_is_slow(
    server: LiveshopProcess, room_id: str, host: str, chatter: WsClient, sent: list[str]
) -> int:
    """Big chat messages and big pinned products until the server cuts off one viewer.

    Chat ids go to `sent` in the order sent; returns how many times the product was pinned.
    """
    product_id = await _big_product(server.base_url, host)
    slow_before = await metric(server.base_url, SLOW_METRIC)
    stop = asyncio.Event()
    pins = 0

    async def chat() -> None:
        n = 0
        while not stop.is_set():
            client_id = f"big-{n}"
            sent.append(client_id)
            await chatter.chat(BIG_TEXT, client_id)
            n += 1
            await asyncio.sleep(CHAT_INTERVAL)

    async def pin() -> None:
        nonlocal pins
        try:
            async with http(server.base_url, host) as client:
                while pins < MAX_PINS:
                    response = await client.post(
                        f"/rooms/{room_id}/showcase", json={"product_id": product_id}
                    )
                    assert response.status_code == 200, response.text
                    pins += 1
                    if pins % 10 == 0 and await metric(server.base_url, SLOW_METRIC) > slow_before:
                        return
        finally:
            stop.set()

    started = time.monotonic()
    await asyncio.gather(chat(), pin())
    took = time.monotonic() - started
    assert await metric(server.base_url, SLOW_METRIC) == slow_before + 1, (
        f"not exactly one slow consumer after {pins} pins and {len(sent)} chats in {took:.1f}s"
    )
    return pins


async def test_a_stalled_viewer_is_closed_with_4008_and_others_miss_nothing(
    server: LiveshopProcess,
) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(server.base_url, host)
    slow_user = unique("slow")
    assert server.port is not None
    slow = await _stalled_client(server.ws_url(room_id, make_token(slow_user)), server.port)
    normal = await WsClient.connect(server.ws_url(room_id, make_token(unique("ok"))), name="ok")
    chatter = await WsClient.connect(server.ws_url(room_id, make_token(unique("c"))), name="c")
    clients = [normal, chatter]
    try:
        normal_hello = await normal.hello()
        await chatter.hello()
        sent: list[str] = []
        pins = await _flood_until_one_is_slow(server, room_id, host, chatter, sent)

        # The stalled client reads again, promptly (within the server's 5 s close timeout; the
        # next test waits longer): what was already on its way, then close 4008.
        got, code = await _read_to_the_end(slow, seconds=15)
        assert code == 4008, f"slow client closed with {code} after {len(got)} frames"
        assert got, "the slow client got nothing"
        assert got[0]["type"] == "hello", got[:1]

        # The room goes on: more chat reaches the normal viewer, which missed nothing.
        for n in range(5):
            client_id = f"after-{n}"
            sent.append(client_id)
            await chatter.chat(f"after {n}", client_id)
        await normal.wait_chat(sent, seconds=20)
        assert not normal.closed, f"the normal viewer was closed with {normal.close_code}"
        assert not chatter.closed, f"the chatter was closed with {chatter.close_code}"
        assert_contiguous(normal.room_events(), normal_hello["seq"], normal.name)
        chat_ids = [str(f["client_id"]) for f in normal.chat_messages()]
        assert chat_ids == sent, "every message exactly once, in the order sent"
        pinned = [f for f in normal.room_events() if f["type"] == "showcase.pinned"]
        assert len(pinned) == pins
        refused = [f for f in chatter.frames if f.get("type") == "error"]
        assert not refused, f"messages refused: {refused[:3]}"

        # The slow client recovers everything it missed by reconnecting with since.
        slow_hello = got[0]
        slow_events = [f for f in got if f.get("type") != "hello"]
        last = int(slow_events[-1]["seq"]) if slow_events else int(slow_hello["seq"])
        back = await WsClient.connect(
            server.ws_url(room_id, make_token(slow_user), since=last, epoch=slow_hello["epoch"]),
            name="slow-again",
        )
        clients.append(back)
        back_hello = await back.hello()
        assert back_hello["recovered"] is True, back_hello
        await back.wait_chat(["after-4"], seconds=10)
        assert_contiguous(slow_events + back.room_events(), slow_hello["seq"], "slow viewer")
    finally:
        await slow.close()
        await close_all(clients)


async def test_a_viewer_that_stays_stalled_is_let_go(server: LiveshopProcess) -> None:
    """Cut off as too slow, a client that does not read for a while longer must not be left
    hanging: the server drops the connection (and stops counting it), and when the client
    reads again it finds the socket closed rather than silently open with no more events."""
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(server.base_url, host)
    assert server.port is not None
    slow = await _stalled_client(server.ws_url(room_id, make_token(unique("slow"))), server.port)
    chatter = await WsClient.connect(server.ws_url(room_id, make_token(unique("c"))), name="c")
    try:
        await chatter.hello()
        connections = await metric(server.base_url, CONNECTIONS_METRIC)
        await _flood_until_one_is_slow(server, room_id, host, chatter, [])

        # Still not reading, well past the server's close timeout (5 s)...
        await asyncio.sleep(8)
        counted = await metric(server.base_url, CONNECTIONS_METRIC)
        # ...then reading again.
        got, code = await _read_to_the_end(slow, seconds=15)
        report = (
            f"8 s after the cut-off the server counted {counted:.0f} connections "
            f"(expected {connections - 1:.0f}); reading again, the client got {len(got)} frames "
            f"and then {'no close within 15 s' if code is None else f'close {code}'}"
        )
        assert code in (4008, 1006), report
        assert counted == connections - 1, report
        assert not chatter.closed, f"the chatter was closed with {chatter.close_code}"
    finally:
        await slow.close()
        await chatter.close()


async def test_bursts_of_chat_do_not_cut_off_viewers_that_keep_up(
    server: LiveshopProcess,
) -> None:
    """18 people say one short word at the same moment, a few times: nobody is slow.

    The queue holds 16 frames; 18 tiny messages are far below any network buffer, so viewers
    that read continuously must get all of them. The rounds start at different moments of the
    counter interval, when the server also checks the stream position.
    """
    senders_count = 18
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(server.base_url, host)
    viewer = await WsClient.connect(server.ws_url(room_id, make_token(unique("v"))), name="v")
    senders = [
        await WsClient.connect(server.ws_url(room_id, make_token(unique(f"s{i}"))), name=f"s{i}")
        for i in range(senders_count)
    ]
    clients = [viewer, *senders]
    try:
        for client in clients:
            await client.hello()
        before = await metric(server.base_url, SLOW_METRIC)
        for round_ in range(6):
            await asyncio.sleep(0.1 + 0.13 * round_)
            wanted = {f"r{round_}-{i}" for i in range(senders_count)}
            await asyncio.gather(*(s.chat("hi", f"r{round_}-{i}") for i, s in enumerate(senders)))
            with contextlib.suppress(TimeoutError):
                await viewer.wait_chat(wanted, seconds=5)
            dropped = await metric(server.base_url, SLOW_METRIC) - before
            closed = {c.name: c.close_code for c in clients if c.closed}
            assert not closed, (
                f"round {round_}: {dropped:.0f} connections cut off as too slow by a burst of "
                f"{senders_count} short messages; closed: {closed}; the viewer got "
                f"{len(viewer.chat_messages())} of {senders_count * (round_ + 1)} messages"
            )
            assert dropped == 0, f"round {round_}: {dropped:.0f} cut off as too slow"
        assert_contiguous(viewer.room_events(), int(viewer.frames[0]["seq"]), viewer.name)
    finally:
        await close_all(clients)
