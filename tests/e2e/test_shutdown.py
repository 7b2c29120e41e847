"""SIGTERM drains: websockets hear 1001 and move to another process, which recovers them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidHandshake

from server.adapters.mongo.embedded import EmbeddedMongo
from tests.e2e.api import create_live_room, make_token, room_stats, unique
from tests.e2e.conftest import Cluster, server_env
from tests.e2e.processes import LiveshopProcess, running
from tests.e2e.test_flash_sale import ADDRESS, launch
from tests.e2e.wsclient import WsClient, assert_contiguous, chat_id_is, close_all
from tests.servers import RedisServer

GRACE_SECONDS = 5.0
MONGODB_TIMEOUT_SECONDS = 5.0  # LIVESHOP_MONGODB_TIMEOUT_SECONDS's default


@pytest.fixture
def doomed(cluster: Cluster) -> Iterator[LiveshopProcess]:
    """A third process on the cluster's Redis and database, for the test to stop."""
    process = LiveshopProcess(
        cluster.env(LIVESHOP_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS)), name="doomed"
    )
    with process:
        yield process


async def test_sigterm_drains_websockets_with_1001_and_exits_in_time(
    cluster: Cluster, doomed: LiveshopProcess
) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.b.base_url, host)
    user = unique("viewer")
    viewer = await WsClient.connect(doomed.ws_url(room_id, make_token(user)), name="viewer@doomed")
    anonymous = await WsClient.connect(doomed.ws_url(room_id), name="anon@doomed")
    chatter = await WsClient.connect(cluster.b.ws_url(room_id, make_token(unique("c"))), name="c@B")
    clients = [viewer, anonymous, chatter]
    keepalive = httpx.AsyncClient(base_url=doomed.base_url, timeout=3.0, trust_env=False)
    try:
        hello = await viewer.hello()
        await anonymous.hello()
        await chatter.hello()
        assert (await keepalive.get("/readyz")).status_code == 200
        await chatter.chat("before shutdown", "before")
        await viewer.wait_seen(chat_id_is("before"))
        since, epoch = viewer.last_seq(), str(hello["epoch"])

        doomed.terminate()
        for client in (viewer, anonymous):
            assert await client.wait_closed(GRACE_SECONDS) == 1001, client.name

        # Draining: not ready (on a connection opened before), and no new viewers.
        try:
            ready = await keepalive.get("/readyz")
        except httpx.TransportError:
            pass
        else:
            assert ready.status_code == 503, f"/readyz while draining: {ready.status_code}"
        try:
            late = await WsClient.connect(doomed.ws_url(room_id, make_token(unique("late"))))
        except (OSError, InvalidHandshake):
            pass  # refused: the listening socket is closed, or the handshake is turned down
        else:
            clients.append(late)
            code = await late.wait_closed()
            assert code == 1001, f"a new socket during drain was closed with {code}"
            assert not any(f.get("type") == "hello" for f in late.frames), late.frames

        code = doomed.wait(GRACE_SECONDS + 10)
        assert code is not None, "still running after SIGTERM"
        assert "Traceback" not in doomed.stderr_text(), doomed.stderr_text()[-3000:]

        # The viewer moves to the other process and misses nothing.
        await chatter.chat("while moving", "moving")
        back = await WsClient.connect(
            cluster.a.ws_url(room_id, make_token(user), since=since, epoch=epoch), name="back@A"
        )
        clients.append(back)
        back_hello = await back.hello()
        assert back_hello["recovered"] is True, back_hello
        await back.wait_seen(chat_id_is("moving"))
        assert_contiguous(back.room_events(), since, back.name)
    finally:
        await keepalive.aclose()
        await close_all(clients)


async def test_sigterm_keeps_the_likes_tapped_since_the_last_count(cluster: Cluster) -> None:
    # Counted each 5 s only (the longest interval taken): the likes are all but always still
    # waiting to be counted when the stop comes, a few milliseconds after them.
    env = cluster.env(LIVESHOP_COUNTER_INTERVAL="5", LIVESHOP_SHUTDOWN_GRACE_SECONDS="5")
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    with LiveshopProcess(env, name="stopping") as stopping:
        async with await WsClient.connect(
            stopping.ws_url(room_id, make_token(unique("fan"))), name="fan@stopping"
        ) as fan:
            await fan.hello()
            await fan.send({"type": "like", "count": 25})
            await fan.send({"type": "ping", "ref": "read"})
            await fan.recv_until("pong")  # the likes were read
            stopping.terminate()
            assert await fan.wait_closed(GRACE_SECONDS) == 1001
        assert stopping.wait(GRACE_SECONDS + 10) == 0
    assert (await room_stats(cluster.a.base_url, host, room_id))["likes"] == 25


async def test_viewers_sent_away_by_a_stop_are_not_counted_twice(
    cluster: Cluster, doomed: LiveshopProcess
) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    watcher = await WsClient.connect(cluster.a.ws_url(room_id), name="watcher@A")
    users = [unique("mover") for _ in range(4)]
    movers = [await WsClient.connect(doomed.ws_url(room_id, make_token(u))) for u in users]
    clients = [watcher, *movers]
    try:
        for client in clients:
            await client.hello()
        await watcher.wait_seen(lambda f: f.get("type") == "viewers" and f["count"] == 5)
        doomed.terminate()
        for mover in movers:
            assert await mover.wait_closed(GRACE_SECONDS) == 1001
        for user in users:  # back at once, on the other process
            back = await WsClient.connect(cluster.b.ws_url(room_id, make_token(user)))
            clients.append(back)
            await back.hello()
        assert doomed.wait(GRACE_SECONDS + 10) == 0
        seen = []
        for _ in range(10):  # a few counts of both processes (each 0.2 s)
            seen.append((await room_stats(cluster.a.base_url, host, room_id))["viewers"])
            await asyncio.sleep(0.2)
        assert max(seen) <= 5, seen  # the stopped process's count went with it
        assert seen[-1] == 5, seen
        assert (await room_stats(cluster.a.base_url, host, room_id))["peak_viewers"] == 5
    finally:
        await close_all(clients)


async def test_sigterm_exit_status_is_0(cluster: Cluster, doomed: LiveshopProcess) -> None:
    """A drained shutdown is a clean exit: status 0, not death by the signal (143)."""
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.b.base_url, host)
    async with await WsClient.connect(doomed.ws_url(room_id), name="anon@doomed") as viewer:
        await viewer.hello()
        doomed.terminate()
        assert await viewer.wait_closed(GRACE_SECONDS) == 1001
    code = doomed.wait(GRACE_SECONDS + 10)
    assert code == 0, f"`liveshop serve` exited with {code} after a graceful SIGTERM drain"


async def test_sigterm_exits_in_time_with_mongodb_gone(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Its MongoDB gone (the whole stack going down), a process still stops in its grace and
    MongoDB's deadline, not a driver's 30 s default for finding a server it will not find."""
    mongo = EmbeddedMongo(tmp_path / "mongo")
    env = server_env(redis_server.url, await mongo.start(), "gone")
    env["LIVESHOP_SHUTDOWN_GRACE_SECONDS"] = str(GRACE_SECONDS)
    try:
        with running([LiveshopProcess(env, name="MG")]) as (server,):
            # Its client holds sessions to end at close, as any process that has served does.
            await create_live_room(server.base_url, make_token(unique("host"), "host"))
            assert mongo.pid is not None
            os.kill(mongo.pid, signal.SIGKILL)
            started = time.monotonic()
            server.terminate()
            code = server.wait(GRACE_SECONDS + MONGODB_TIMEOUT_SECONDS + 5)
            elapsed = time.monotonic() - started
            assert code == 0, f"exit {code} after {elapsed:.1f} s"
    finally:
        await mongo.stop()  # reaps the killed process


async def test_a_claim_under_way_as_the_drain_begins_is_answered_before_its_socket_closes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Its order is written (the process waits for it) and kept: closed first, the buyer never
    heard of it, and a client that claimed again with a new key after reconnecting got two."""
    mongo = EmbeddedMongo(tmp_path / "mongo")
    env = server_env(redis_server.url, await mongo.start(), "drain-claim")
    env["LIVESHOP_SHUTDOWN_GRACE_SECONDS"] = str(GRACE_SECONDS)
    try:
        with running([LiveshopProcess(env, name="DC")]) as (server,):
            host = make_token(unique("host"), "host")
            room_id = await create_live_room(server.base_url, host)
            offer_id = await launch(server.base_url, host, room_id, quantity=5)
            buyer = await WsClient.connect(server.ws_url(room_id, make_token(unique("b"))))
            async with buyer:
                await buyer.hello()
                assert mongo.pid is not None
                os.kill(mongo.pid, signal.SIGSTOP)  # the order's write waits for it
                try:
                    await buyer.send(
                        {
                            "type": "offer.claim",
                            "offer_id": offer_id,
                            "quantity": 1,
                            "idempotency_key": "drained-1",
                            "shipping_address": ADDRESS,
                            "ref": "c1",
                        }
                    )
                    await asyncio.sleep(0.3)  # reserved in Redis, the order's write under way
                    server.terminate()
                    await asyncio.sleep(0.3)
                finally:
                    os.kill(mongo.pid, signal.SIGCONT)
                assert await buyer.wait_closed(GRACE_SECONDS + MONGODB_TIMEOUT_SECONDS) == 1001
            updates = [f for f in buyer.frames if f.get("type") == "order.updated"]
            # Heard once or twice (from the claim, and back through the broker before the close):
            # the same order, as a notice told again would be.
            assert {u["order"]["idempotency_key"] for u in updates} == {"drained-1"}, buyer.frames
            assert server.wait(GRACE_SECONDS + 10) == 0
    finally:
        await mongo.stop()
