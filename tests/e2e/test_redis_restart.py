"""Redis goes down and comes back empty under two running processes: meanwhile they are not
ready; afterwards viewers are told to reload (close 4012) or carry on, old cursors no longer
recover, and chat flows again across processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.api import create_live_room, make_token, unique
from tests.e2e.conftest import server_env
from tests.e2e.processes import LiveshopProcess, running
from tests.e2e.wsclient import Frame, WsClient, chat_id_is, close_all
from tests.servers import RedisServer

RECOVERY_SECONDS = 15.0


@pytest.fixture
def pair(
    redis_server: RedisServer, mongodb_url: str, e2e_database: str
) -> Iterator[tuple[LiveshopProcess, LiveshopProcess]]:
    env = server_env(redis_server.url, mongodb_url, e2e_database)
    with running([LiveshopProcess(env, name="RA"), LiveshopProcess(env, name="RB")]) as both:
        yield both[0], both[1]


async def _readyz(process: LiveshopProcess) -> int:
    async with httpx.AsyncClient(base_url=process.base_url, trust_env=False, timeout=10) as http:
        return (await http.get("/readyz")).status_code


async def _connect_when_possible(url: str, name: str) -> tuple[WsClient, Frame]:
    """Connect until hello arrives: right after the restart a process may still refuse."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        client = await WsClient.connect(url, name=name)
        try:
            return client, await client.hello()
        except Exception:
            await client.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _chat_until_seen(sender: WsClient, receiver: WsClient, client_id: str) -> Frame:
    """Send until the receiver sees it (a send refused while Redis comes back is retried)."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        tag = f"{client_id}-{attempt}"
        await sender.chat(f"after restart {tag}", tag)
        try:
            return await receiver.wait_seen(chat_id_is(tag), seconds=1.0)
        except TimeoutError:
            if time.monotonic() > deadline or sender.closed or receiver.closed:
                raise


async def test_redis_restart_resets_the_stream_and_chat_recovers(
    pair: tuple[LiveshopProcess, LiveshopProcess], redis_server: RedisServer
) -> None:
    a, b = pair
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(a.base_url, host)
    users = {"va": unique("va"), "vb": unique("vb"), "ca": unique("ca"), "cb": unique("cb")}
    viewer_a = await WsClient.connect(a.ws_url(room_id, make_token(users["va"])), name="va@A")
    viewer_b = await WsClient.connect(b.ws_url(room_id, make_token(users["vb"])), name="vb@B")
    chatter = await WsClient.connect(a.ws_url(room_id, make_token(users["ca"])), name="ca@A")
    clients = [viewer_a, viewer_b, chatter]
    try:
        hello_a, hello_b = await viewer_a.hello(), await viewer_b.hello()
        await chatter.hello()
        old_epoch = str(hello_a["epoch"])
        assert hello_b["epoch"] == old_epoch
        await chatter.chat("before the restart", "before")
        for viewer in (viewer_a, viewer_b):
            await viewer.wait_seen(chat_id_is("before"))
        cursors = {viewer.name: viewer.last_seq() for viewer in (viewer_a, viewer_b)}

        # Redis goes away: neither process is ready...
        await asyncio.to_thread(redis_server.stop)
        for process in (a, b):
            assert await _readyz(process) == 503, f"{process.name} ready without Redis"
        # ...and comes back empty, on the same port.
        await asyncio.to_thread(redis_server.start)

        # Each viewer is either sent away to reload (4012) or keeps its socket.
        await asyncio.gather(
            *(viewer.wait_closed(5.0) for viewer in (viewer_a, viewer_b)), return_exceptions=True
        )
        for viewer in (viewer_a, viewer_b):
            if viewer.closed:
                assert viewer.close_code == 4012, f"{viewer.name} closed with {viewer.close_code}"

        # Reconnecting with the old cursor: history is gone, so hello says reload.
        fresh: dict[str, WsClient] = {}
        for viewer, process, user in ((viewer_a, a, users["va"]), (viewer_b, b, users["vb"])):
            url = process.ws_url(
                room_id, make_token(user), since=cursors[viewer.name], epoch=old_epoch
            )
            client, hello = await _connect_when_possible(url, f"{viewer.name}-again")
            clients.append(client)
            fresh[viewer.name] = client
            assert hello["recovered"] is False, hello
            assert hello["epoch"] != old_epoch, "a stream that lost its history needs a new epoch"
            assert hello["room"]["status"] == "live"

        # Chat flows across processes again, both ways (the old chatter may be gone too).
        if chatter.closed:
            assert chatter.close_code == 4012, chatter.close_code
            chatter, _ = await _connect_when_possible(
                a.ws_url(room_id, make_token(users["ca"])), "ca@A-again"
            )
            clients.append(chatter)
        chatter_b, _ = await _connect_when_possible(
            b.ws_url(room_id, make_token(users["cb"])), "cb@B"
        )
        clients.append(chatter_b)
        seen_b = await _chat_until_seen(chatter, fresh["vb@B"], "from-A")
        seen_a = await _chat_until_seen(chatter_b, fresh["va@A"], "from-B")
        for frame in (seen_a, seen_b):
            assert frame["epoch"] != old_epoch, frame
        for viewer in (viewer_a, viewer_b):
            if not viewer.closed:  # kept its socket: it must follow the new stream too
                await viewer.wait_seen(chat_id_is(seen_a["client_id"]))
        # Both processes follow one new stream.
        assert fresh["va@A"].frames[0]["epoch"] == fresh["vb@B"].frames[0]["epoch"]
        for process in (a, b):
            assert await _readyz(process) == 200, f"{process.name} not ready after Redis is back"
    finally:
        await close_all(clients)
