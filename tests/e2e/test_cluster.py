"""Two `liveshop serve` processes sharing one Redis and one MongoDB: one room, one stream.

Viewers connect to either process; chat, counters, bans, reconnection with `since` and the end
of a room must look the same from both.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pymongo import MongoClient

from server.domain.rooms import END_TOLD_WITHIN
from tests.e2e.api import (
    create_live_room,
    end_room,
    live_room_ids,
    make_token,
    room_stats,
    unique,
)
from tests.e2e.conftest import Cluster, server_env
from tests.e2e.processes import LiveshopProcess, running
from tests.e2e.wsclient import (
    Frame,
    WsClient,
    assert_contiguous,
    chat_id_is,
    close_all,
    connect_closed_code,
)


async def _viewer(
    process: LiveshopProcess,
    room_id: str,
    user: str,
    role: str = "shopper",
    *,
    since: int | None = None,
    epoch: str | None = None,
) -> tuple[WsClient, Frame]:
    """A signed-in viewer on `process` (named after the user), and its hello."""
    url = process.ws_url(room_id, make_token(user, role, name=user), since=since, epoch=epoch)
    client = await WsClient.connect(url, name=f"{user}@{process.name}")
    return client, await client.hello()


async def test_chat_counters_and_likes_are_shared_across_processes(cluster: Cluster) -> None:
    host = make_token(unique("host"), "host", name="Host")
    room_id = await create_live_room(cluster.a.base_url, host)
    viewer_a, hello_a = await _viewer(cluster.a, room_id, unique("viewer-a"))
    viewer_b, hello_b = await _viewer(cluster.b, room_id, unique("viewer-b"))
    sender_a, _ = await _viewer(cluster.a, room_id, unique("sender-a"))
    sender_b, _ = await _viewer(cluster.b, room_id, unique("sender-b"))
    clients = [viewer_a, viewer_b, sender_a, sender_b]
    try:
        for hello in (hello_a, hello_b):
            assert hello["room"]["status"] == "live"
            assert hello["room"]["pinned_product"] is not None
            assert isinstance(hello["epoch"], str)
            assert hello["epoch"]
        assert hello_a["epoch"] == hello_b["epoch"], "both processes must serve one stream"

        # One message from A reaches the viewers on A and on B as the same room event.
        await sender_a.chat("hello from A", "first")
        got_a = await viewer_a.recv_until("chat.message")
        got_b = await viewer_b.recv_until("chat.message")
        assert got_a == got_b, "the same event must reach both processes unchanged"
        assert got_a["text"] == "hello from A"
        assert got_a["client_id"] == "first"
        assert got_a["user"]["id"] == sender_a.name.split("@")[0]
        assert got_a["user"]["role"] == "shopper"
        assert got_a["epoch"] == hello_a["epoch"]
        assert got_a["seq"] > hello_a["seq"]

        # 20 messages from each side at once: one order, the same on every socket.
        a_ids = [f"A-{i}" for i in range(20)]
        b_ids = [f"B-{i}" for i in range(20)]

        async def send_all(client: WsClient, ids: list[str]) -> None:
            for client_id in ids:
                await client.chat(f"message {client_id}", client_id)

        await asyncio.gather(send_all(sender_a, a_ids), send_all(sender_b, b_ids))
        wanted = {"first", *a_ids, *b_ids}
        for client in clients:
            await client.wait_chat(wanted)
        orders = {
            client.name: [(f["seq"], f["id"], f["client_id"]) for f in client.chat_messages()]
            for client in clients
        }
        reference = orders[viewer_a.name]
        for name, order in orders.items():
            assert order == reference, f"{name} saw another order than {viewer_a.name}"
        seqs = [seq for seq, _, _ in reference]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        order_ids = [client_id for _, _, client_id in reference]
        assert [i for i in order_ids if i.startswith("A-")] == a_ids, "A's messages reordered"
        assert [i for i in order_ids if i.startswith("B-")] == b_ids, "B's messages reordered"
        assert len(order_ids) == len(wanted), f"duplicates or strays: {order_ids}"
        for client, hello in ((viewer_a, hello_a), (viewer_b, hello_b)):
            assert_contiguous(client.room_events(), hello["seq"], client.name)

        # 3 viewers on A and 2 on B: the room counts 5.
        extra_a, _ = await _viewer(cluster.a, room_id, unique("viewer-a2"))
        clients.append(extra_a)

        def five(frame: Frame) -> bool:
            return frame.get("type") == "viewers" and frame.get("count") == 5

        await asyncio.gather(*(c.wait_seen(five, seconds=10) for c in (viewer_a, viewer_b)))
        for process in (cluster.a, cluster.b):
            stats = await room_stats(process.base_url, host, room_id)
            assert stats["viewers"] == 5, stats
            assert stats["peak_viewers"] >= 5, stats

        # Likes tapped on both processes add up once.
        await sender_a.send({"type": "like", "count": 3})
        await sender_b.send({"type": "like", "count": 4})
        await extra_a.send({"type": "like", "count": 2})

        def nine(frame: Frame) -> bool:
            return frame.get("type") == "likes" and frame.get("count") == 9

        await asyncio.gather(*(c.wait_seen(nine, seconds=10) for c in (viewer_a, viewer_b)))
        await asyncio.sleep(1.0)  # a few more counter intervals: nothing counted twice
        for client in (viewer_a, viewer_b):
            counts = [f["count"] for f in client.frames if f.get("type") == "likes"]
            assert max(counts) == 9, f"{client.name} saw likes {counts}"
            assert counts == sorted(counts), f"{client.name} saw likes go down: {counts}"
        stats = await room_stats(cluster.b.base_url, host, room_id)
        assert stats["likes"] == 9, stats
        for client, hello in ((viewer_a, hello_a), (viewer_b, hello_b)):
            assert_contiguous(client.room_events(), hello["seq"], client.name)
            assert not client.closed, f"{client.name} was closed with {client.close_code}"
    finally:
        await close_all(clients)


async def test_ban_on_one_process_closes_the_user_everywhere(cluster: Cluster) -> None:
    host_id = unique("host")
    host_token = make_token(host_id, "host", name="Host")
    room_id = await create_live_room(cluster.a.base_url, host_token)
    bad = unique("troll")
    host, _ = await _viewer(cluster.a, room_id, host_id, "host")
    bad_b1, _ = await _viewer(cluster.b, room_id, bad)
    bad_b2, _ = await _viewer(cluster.b, room_id, bad)
    bad_a, _ = await _viewer(cluster.a, room_id, bad)
    bystander, _ = await _viewer(cluster.b, room_id, unique("bystander"))
    clients = [host, bad_b1, bad_b2, bad_a, bystander]
    try:
        await bad_b1.chat("spam", "spam-1")
        await bystander.wait_seen(chat_id_is("spam-1"))

        await host.send({"type": "user.ban", "user_id": bad, "ref": "ban-1"})
        for client in (bad_b1, bad_b2, bad_a):
            banned = await client.recv_until("user.banned")
            assert banned["user_id"] == bad
            assert await client.wait_closed() == 4003, client.name
        seen = await bystander.recv_until("user.banned")
        assert seen["user_id"] == bad
        errors = [f for f in host.frames if f.get("type") == "error"]
        assert not errors, f"the host's ban was refused: {errors}"

        # Still banned on a new socket, on either process.
        for process in (cluster.a, cluster.b):
            code, first = await connect_closed_code(
                process.ws_url(room_id, make_token(bad, name=bad))
            )
            assert code == 4003, f"banned user reconnecting to {process.name}: {code}, {first}"
            assert first is None, f"a banned user got a frame: {first}"

        # Everyone else carries on.
        await host.chat("carry on", "after-ban")
        await bystander.wait_seen(chat_id_is("after-ban"))
        assert not bystander.closed
    finally:
        await close_all(clients)


async def test_reconnect_to_the_other_process_recovers_missed_events(cluster: Cluster) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    viewer, hello = await _viewer(cluster.a, room_id, unique("viewer"))
    chatter_a, _ = await _viewer(cluster.a, room_id, unique("chatter-a"))
    chatter_b, _ = await _viewer(cluster.b, room_id, unique("chatter-b"))
    watcher, _ = await _viewer(cluster.b, room_id, unique("watcher"))
    clients = [chatter_a, chatter_b, watcher]
    try:
        epoch = str(hello["epoch"])
        await chatter_a.chat("before", "before")
        await viewer.wait_seen(chat_id_is("before"))
        since = viewer.last_seq()
        await viewer.close()

        missed = ["m1", "m2", "m3", "m4", "m5"]
        for client_id in missed[:3]:
            await chatter_a.chat(f"missed {client_id}", client_id)
        for client_id in missed[3:]:
            await chatter_b.chat(f"missed {client_id}", client_id)
        await watcher.wait_chat(missed)
        expected = [
            (f["seq"], f["id"], f["client_id"])
            for f in watcher.chat_messages()
            if f["client_id"] in missed
        ]

        back, back_hello = await _viewer(
            cluster.b, room_id, viewer.name.split("@")[0], since=since, epoch=epoch
        )
        clients.append(back)
        assert back_hello["recovered"] is True, back_hello
        assert back_hello["epoch"] == epoch
        assert back_hello["seq"] >= since + len(missed)
        await back.wait_chat(missed)
        got = [(f["seq"], f["id"], f["client_id"]) for f in back.chat_messages()]
        assert got == expected, "the missed messages must follow hello, in order, exactly once"
        assert_contiguous(back.room_events(), since, back.name)

        # A cursor of another epoch cannot be recovered: the client must reload.
        stale, stale_hello = await _viewer(
            cluster.b, room_id, unique("stale"), since=since, epoch="0123abcd"
        )
        clients.append(stale)
        assert stale_hello["recovered"] is False, stale_hello
        assert stale_hello["epoch"] == epoch
        # ...and a cursor from the future neither.
        future, future_hello = await _viewer(
            cluster.a, room_id, unique("future"), since=back_hello["seq"] + 1000, epoch=epoch
        )
        clients.append(future)
        assert future_hello["recovered"] is False, future_hello
        for client, first in ((stale, stale_hello), (future, future_hello)):
            await client.send({"type": "ping", "ref": "p"})
            await client.recv_until("pong")
            old = [f for f in client.room_events() if f["seq"] <= first["seq"]]
            assert not old, f"{client.name} was sent history it cannot place: {old}"
    finally:
        await close_all(clients)


async def test_ending_a_room_closes_every_viewer_on_every_process(cluster: Cluster) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    viewers = [
        (await _viewer(cluster.a, room_id, unique("va1")))[0],
        (await _viewer(cluster.a, room_id, unique("va2")))[0],
        (await _viewer(cluster.b, room_id, unique("vb1")))[0],
    ]
    anonymous = await WsClient.connect(cluster.b.ws_url(room_id), name="anon@B")
    anon_hello = await anonymous.hello()
    assert anon_hello["you"]["anonymous"] is True
    viewers.append(anonymous)
    try:
        ended = await end_room(cluster.b.base_url, host, room_id)
        assert ended["status"] == "ended"
        for client in viewers:
            await client.recv_until("room.ended")
            assert await client.wait_closed() == 4010, client.name
            assert client.frames[-1]["type"] == "room.ended", f"{client.name}: {client.frames[-3:]}"
        for process in (cluster.a, cluster.b):
            for token in (make_token(unique("late")), None):
                code, first = await connect_closed_code(process.ws_url(room_id, token))
                assert code == 4010, f"new socket on {process.name} to an ended room: {code}"
                assert first is None or first.get("type") != "hello", first
        assert room_id not in await live_room_ids(cluster.a.base_url)
    finally:
        await close_all(viewers)


async def test_an_end_stored_by_a_process_that_died_untold_reaches_the_viewers(
    cluster: Cluster,
) -> None:
    """A process stored the room's end and died before telling anyone; the host never sent
    the end again. The other processes' housekeeping tells the viewers."""
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    viewers = [
        (await _viewer(cluster.a, room_id, unique("va")))[0],
        (await _viewer(cluster.b, room_id, unique("vb")))[0],
    ]
    try:
        ended_at = datetime.now(UTC) - END_TOLD_WITHIN - timedelta(seconds=1)
        client: MongoClient[dict[str, Any]] = MongoClient(cluster.mongodb_url)
        with client:
            stored = client[cluster.database]["rooms"].update_one(
                {"_id": room_id},
                {"$set": {"status": "ended", "ended_at": ended_at, "end_untold": True}},
            )
        assert stored.modified_count == 1
        for viewer in viewers:
            await viewer.recv_until("room.ended", seconds=10)
            assert await viewer.wait_closed() == 4010, viewer.name
        client = MongoClient(cluster.mongodb_url)
        with client:  # noted told just after it was published
            rooms = client[cluster.database]["rooms"]
            for _ in range(50):
                room = rooms.find_one({"_id": room_id})
                if room is not None and room["end_untold"] is False:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the end is still noted untold: {room}")
    finally:
        await close_all(viewers)


async def test_moderation_on_one_process_applies_on_the_other(cluster: Cluster) -> None:
    host_id = unique("host")
    room_id = await create_live_room(cluster.a.base_url, make_token(host_id, "host"))
    shopper = unique("shopper")
    other = unique("other")
    moderator, _ = await _viewer(cluster.b, room_id, unique("mod"), "moderator")
    host, _ = await _viewer(cluster.a, room_id, host_id, "host")
    shopper_a, _ = await _viewer(cluster.a, room_id, shopper)
    shopper_b, _ = await _viewer(cluster.b, room_id, shopper)
    other_b, _ = await _viewer(cluster.b, room_id, other)
    clients = [moderator, host, shopper_a, shopper_b, other_b]
    try:
        # A message sent on A, deleted by a moderator on B: gone for everyone.
        await shopper_a.chat("rude words", "rude")
        message = await moderator.wait_seen(chat_id_is("rude"))
        await moderator.send({"type": "chat.delete", "message_id": message["id"], "ref": "del"})
        for client in (host, shopper_a, other_b):
            deleted = await client.recv_until("chat.deleted")
            assert deleted["message_id"] == message["id"], deleted

        # Muted by the moderator on B: the user can chat from neither process.
        mute = {"type": "user.mute", "user_id": shopper, "duration_seconds": 60, "ref": "mute"}
        await moderator.send(mute)
        for client in (host, shopper_a, shopper_b, other_b):
            muted = await client.recv_until("user.muted")
            assert muted["user_id"] == shopper, muted
        for client in (shopper_a, shopper_b):
            await client.chat("am I muted?", f"muted-{client.name}")
            error = await client.recv_until("error")
            assert error["code"] == "muted", error
            assert error["ref"] == f"muted-{client.name}", error
        again, again_hello = await _viewer(cluster.b, room_id, shopper)
        clients.append(again)
        assert again_hello["you"]["muted_until"] is not None, again_hello["you"]

        # Slow mode set by the host on A holds back a shopper on B.
        await host.send({"type": "room.slow_mode", "seconds": 30, "ref": "slow"})
        slow = await other_b.recv_until("room.slow_mode")
        assert slow["seconds"] == 30, slow
        await other_b.chat("first", "first")
        await other_b.wait_seen(chat_id_is("first"))
        await other_b.chat("second", "second")
        error = await other_b.recv_until("error")
        assert error["code"] == "slow_mode", error
        # Nor does a socket of the same user on the other process get a turn of its own.
        other_a, _ = await _viewer(cluster.a, room_id, other)
        clients.append(other_a)
        await other_a.chat("from A", "from-a")
        error = await other_a.recv_until("error")
        assert (error["code"], error["ref"]) == ("slow_mode", "from-a"), error
        assert not [f for f in host.room_events() if f.get("client_id") == "from-a"]

        assert not [f for f in moderator.frames + host.frames if f.get("type") == "error"]
        assert not any(client.closed for client in clients)
    finally:
        await close_all(clients)


async def test_a_users_chat_rate_is_counted_across_processes(
    redis_url: str, mongodb_url: str, e2e_database: str
) -> None:
    # The chat limit as shipped (a burst of 4 here): a socket on each process does not double it.
    env = server_env(
        redis_url,
        mongodb_url,
        e2e_database,
        LIVESHOP_CHAT_BURST="4",
        LIVESHOP_CHAT_PER_SECOND="0.1",
    )
    pair = [LiveshopProcess(env, name="A"), LiveshopProcess(env, name="B")]
    with running(pair):
        room_id = await create_live_room(pair[0].base_url, make_token(unique("host"), "host"))
        user = unique("chatty")
        on_a, _ = await _viewer(pair[0], room_id, user)
        on_b, _ = await _viewer(pair[1], room_id, user)
        try:
            for n in range(3):
                await on_a.chat(f"a{n}")
                await on_b.chat(f"b{n}")
            lines = {f"{side}{n}" for side in "ab" for n in range(3)}

            def refused() -> list[Frame]:
                return [f for c in (on_a, on_b) for f in c.frames if f.get("type") == "error"]

            def said() -> set[str]:
                return {str(f["client_id"]) for f in on_a.chat_messages()}

            # Each line heard by the room, or refused on its own socket (`ref`: its client_id).
            deadline = time.monotonic() + 10
            while not said() | {e["ref"] for e in refused()} >= lines:
                assert time.monotonic() < deadline, (said(), refused())
                await asyncio.sleep(0.05)
            assert len(said()) == 4, said()  # the burst, over both processes
            assert [e["code"] for e in refused()] == ["rate_limited"] * 2, refused()
        finally:
            await close_all([on_a, on_b])


async def test_knocking_on_rooms_that_do_not_exist_leaves_nothing_in_redis(
    cluster: Cluster,
) -> None:
    """Anyone, without a token, may try any room id: each is refused 4004, and none leaves a
    key behind (a stream settled for it was kept a day, so a flood of them filled Redis)."""
    redis_client = redis.Redis.from_url(cluster.redis_url)
    room_ids = [f"x{secrets.token_hex(12)}" for _ in range(20)]
    for process, room_id in zip((cluster.a, cluster.b) * 10, room_ids, strict=True):
        code, _ = await connect_closed_code(process.ws_url(room_id))
        assert code == 4004
    left = [key for room_id in room_ids for key in redis_client.scan_iter(f"*{room_id}*")]
    redis_client.close()
    assert left == []
