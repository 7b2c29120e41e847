"""The hub with the in-process broker: fan-out, slow viewers, bans and the end (its counters:
test_room_counters.py; keeping in step with the stream: test_hub_stream.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from channels import hub as hub_module
from channels import room_state
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from channels.errors import Banned, Draining, RoomEnded
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from server.domain.errors import NotFound, Unavailable
from server.domain.identity import Identity, Role
from server.metrics import Metrics
from tests.unit.channels.hub_fakes import (
    ROOM,
    SlowSubscribeBroker,
    Socket,
    load_room,
    make_hub,
    viewer,
)


async def test_hello_first_then_events_encoded_once_for_everyone(hub: Hub) -> None:
    sockets = [Socket() for _ in range(3)]
    for n, socket in enumerate(sockets):
        await hub.join("r1", viewer(n), socket)
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "hi"})
    for socket in sockets:
        await socket.until_got("chat.message")
        assert socket.frames()[0]["type"] == "hello"
    texts = [next(t for t in s.sent if "chat.message" in t) for s in sockets]
    assert all(text is texts[0] for text in texts)  # the very same string object


async def test_the_first_hello_tells_the_likes_the_room_kept() -> None:
    async def load_kept_room(room_id: str) -> RoomView:
        return RoomView(replace(ROOM, kept_likes=10_541))

    hub = Hub(MemoryBroker(MemoryBus()), load_kept_room, Metrics(), HubLimits())
    await hub.start()
    try:
        socket = Socket()
        await hub.join(ROOM.id, viewer(1), socket)
        await socket.until(lambda: bool(socket.sent))
        assert socket.frames()[0]["room"]["likes"] == 10_541
    finally:
        await hub.close()


async def test_one_subscription_per_room_however_many_viewers(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    await asyncio.gather(*(hub.join("r1", viewer(n), Socket()) for n in range(20)))
    assert broker._rooms == {"r1"}
    local = hub.room("r1")
    assert local is not None
    assert len(local.connections) == 20


async def test_unknown_room_is_refused_and_leaves_nothing_behind(hub: Hub) -> None:
    with pytest.raises(NotFound):
        await hub.join("nope", viewer(1), Socket())
    assert hub.room("nope") is None
    assert isinstance(hub.broker, MemoryBroker)
    assert "nope" not in hub.broker.bus.streams  # no stream kept a day for a room that is not


async def test_rooms_that_fail_to_open_leave_the_rooms_gauge_as_it_was() -> None:
    """One counted as it opened, while another opened, must not stay counted once it fails."""
    knocked = asyncio.Event()

    async def load(room_id: str) -> RoomView:
        if room_id == "nope":
            await knocked.wait()
        return await load_room(room_id)

    hub = Hub(MemoryBroker(MemoryBus()), load, Metrics(), HubLimits())
    await hub.start()
    try:
        failing = asyncio.create_task(hub.join("nope", viewer(1), Socket()))
        await hub.join("r1", viewer(2), Socket())  # opens while "nope" opens
        rooms = hub.metrics.registry.get_sample_value("liveshop_rooms_active")
        assert rooms == 1  # a knock on a room that may not exist is no room yet
        knocked.set()
        with pytest.raises(NotFound):
            await failing
        assert hub.metrics.registry.get_sample_value("liveshop_rooms_active") == 1  # r1 alone
    finally:
        await hub.close()


class UnconfirmedSubscribe(MemoryBroker):
    """Pub/sub takes the subscribe but never confirms it, as a Redis frozen mid-handshake."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.unsubscribed = asyncio.Event()

    async def subscribe_room(self, room_id: str) -> None:
        self._rooms.add(room_id)

    async def unsubscribe_room(self, room_id: str) -> None:
        await super().unsubscribe_room(room_id)
        self.unsubscribed.set()


async def test_a_room_whose_subscribe_is_never_confirmed_is_not_left_subscribed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hub_module, "SUBSCRIBE_TIMEOUT_SECONDS", 0.05)
    broker = UnconfirmedSubscribe(MemoryBus())
    hub = make_hub(broker)
    await hub.start()
    try:
        with pytest.raises(Unavailable):
            await hub.join("r1", viewer(1), Socket())
        await asyncio.wait_for(broker.unsubscribed.wait(), 1)
        assert not broker._rooms
        assert hub.room("r1") is None
        assert [r.message for r in caplog.records if r.name == "liveshop.hub"] == [
            "room_open_timed_out"
        ]
        assert all(r.levelname == "WARNING" for r in caplog.records if r.name == "liveshop.hub")
    finally:
        await hub.close()


async def test_an_open_that_fails_before_subscribing_drops_a_subscription_left_before() -> None:
    """An earlier open subscribed and timed out, and its unsubscribe found this open under way
    (the room served again): this one, failing to read the room, unsubscribes it."""

    async def store_away(room_id: str) -> RoomView:
        raise Unavailable("the database is away")

    broker = UnconfirmedSubscribe(MemoryBus())
    hub = Hub(broker, store_away, Metrics(), HubLimits(counter_interval=0.05))
    await hub.start()
    try:
        await broker.subscribe_room("r1")  # left by the earlier open
        with pytest.raises(Unavailable):
            await hub.join("r1", viewer(1), Socket())
        await asyncio.wait_for(broker.unsubscribed.wait(), 1)
        assert not broker._rooms
    finally:
        await hub.close()


async def test_a_stalled_viewer_is_closed_and_never_slows_the_others() -> None:
    hub = make_hub(MemoryBroker(MemoryBus()), send_queue_frames=10)
    await hub.start()
    try:
        stuck, healthy = Socket(), Socket()
        stuck.stalled.clear()
        await hub.join("r1", viewer(1), stuck)
        await hub.join("r1", viewer(2), healthy)
        for i in range(30):
            await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
            await asyncio.sleep(0.001)  # a live room, not one burst larger than any queue
        await healthy.until_got("chat.message", 30)
        await stuck.until_closed()
        assert stuck.closed is not None
        assert stuck.closed[0] == CloseCode.TOO_SLOW
        assert hub.metrics.slow_disconnects._value.get() == 1
    finally:
        await hub.close()


async def test_a_viewer_whose_room_opened_as_the_drain_began_is_sent_away() -> None:
    opened = asyncio.Event()

    async def slow_load_room(room_id: str) -> RoomView:
        await opened.wait()
        return await load_room(room_id)

    hub = Hub(MemoryBroker(MemoryBus()), slow_load_room, Metrics(), HubLimits())
    await hub.start()
    try:
        socket = Socket()
        joining = asyncio.create_task(hub.join("r1", viewer(1), socket))
        await asyncio.sleep(0.02)
        await hub.drain(grace_seconds=1)  # nobody to send away yet
        opened.set()
        with pytest.raises(Draining):
            await joining
        assert socket.of_type("hello") == []
        assert hub.connection_count() == 0
    finally:
        await hub.close()


async def test_ban_closes_the_users_sockets_after_the_event(hub: Hub) -> None:
    target, other = Socket(), Socket()
    await hub.join("r1", viewer(1), target)
    await hub.join("r1", viewer(2), other)
    await hub.publish_room_event("r1", {"type": "user.banned", "user_id": "user-1"})
    await target.until_closed()
    assert target.closed is not None
    assert target.closed[0] == CloseCode.BANNED
    assert target.of_type("user.banned")
    await other.until_got("user.banned")
    assert other.closed is None


async def test_room_end_closes_everyone_and_refuses_newcomers(hub: Hub) -> None:
    socket = Socket()
    await hub.join("r1", viewer(1), socket)
    await hub.publish_room_event("r1", {"type": "room.ended"})
    await socket.until_closed()
    assert socket.closed is not None
    assert socket.closed[0] == CloseCode.ROOM_ENDED
    assert socket.of_type("room.ended")
    with pytest.raises(RoomEnded):
        await hub.join("r1", viewer(2), Socket())


async def test_private_frames_reach_all_of_a_users_connections(hub: Hub) -> None:
    phone, laptop, stranger = Socket(), Socket(), Socket()
    await hub.join("r1", viewer(1), phone)
    await hub.join("r1", viewer(1), laptop)
    await hub.join("r1", viewer(2), stranger)
    await hub.send_private("user-1", {"type": "order.updated", "order_id": "o1"})
    for socket in (phone, laptop):
        await socket.until_got("order.updated")
    await asyncio.sleep(0.05)
    assert stranger.of_type("order.updated") == []


async def test_a_socket_whose_token_expired_hears_the_room_not_the_users_private_frames(
    hub: Hub,
) -> None:
    """Its user's orders and addresses are the token's, as over HTTP: a leaked token, however
    short-lived, must not be a standing feed of them."""
    lapsed, fresh = Socket(), Socket()
    await hub.join("r1", viewer(1), lapsed, token_expires=time.time() - 1)
    await hub.join("r1", viewer(1), fresh, token_expires=time.time() + 3600)
    await hub.send_private("user-1", {"type": "order.updated", "order_id": "o1"})
    await fresh.until_got("order.updated")
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "still watching"})
    await lapsed.until_got("chat.message")
    assert lapsed.of_type("order.updated") == []  # told before the room's frame
    # To the instant, as a frame sent is refused (`exp` itself is past, as PyJWT has it).
    conn, _ = await hub.join("r1", viewer(2), Socket(), token_expires=1_800_000_000.0)
    assert (conn.token_holds_at(1_799_999_999.999), conn.token_holds_at(1_800_000_000.0)) == (
        True,
        False,
    )


async def test_a_users_second_socket_is_served_once_their_channel_is_subscribed() -> None:
    broker = SlowSubscribeBroker(MemoryBus())
    hub = make_hub(broker)
    await hub.start()
    try:
        broker.subscribed.clear()
        phone, laptop = Socket(), Socket()
        first = asyncio.create_task(hub.join("r1", viewer(1), phone))
        second = asyncio.create_task(hub.join("r1", viewer(1), laptop))
        await asyncio.sleep(0.05)
        # Served now, the laptop could claim and miss the order.updated that answers it.
        assert not second.done()
        broker.subscribed.set()
        await asyncio.gather(first, second)
        await hub.send_private("user-1", {"type": "order.updated", "order_id": "o1"})
        for socket in (phone, laptop):
            await socket.until_got("order.updated")
    finally:
        await hub.close()


async def test_a_failed_subscribe_is_tried_again_by_the_next_joiner() -> None:
    broker = SlowSubscribeBroker(MemoryBus())
    hub = make_hub(broker)
    await hub.start()
    try:
        broker.failing = 1
        with pytest.raises(Unavailable):
            await hub.join("r1", viewer(1), Socket())
        laptop = Socket()
        await hub.join("r1", viewer(1), laptop)
        await hub.send_private("user-1", {"type": "order.updated", "order_id": "o1"})
        await laptop.until_got("order.updated")
    finally:
        await hub.close()


async def test_a_broker_bug_is_not_passed_off_as_an_outage() -> None:
    class BuggyBroker(MemoryBroker):
        async def publish_private(self, user_id: str, event: dict[str, Any]) -> None:
            raise TypeError("not JSON")

    hub = make_hub(BuggyBroker(MemoryBus()))
    await hub.start()
    try:
        # An outage is Unavailable, from the broker itself; "try again" would not mend a bug.
        with pytest.raises(TypeError):
            await hub.send_private("user-1", {"type": "order.updated"})
    finally:
        await hub.close()


async def test_drain_closes_everyone_with_going_away(hub: Hub) -> None:
    sockets = [Socket() for _ in range(3)]
    conns = [(await hub.join("r1", viewer(n), s))[0] for n, s in enumerate(sockets)]

    async def endpoint_notices_close() -> None:
        for socket, conn in zip(sockets, conns, strict=True):
            await socket.until_closed()
            await hub.leave(conn)

    watcher = asyncio.create_task(endpoint_notices_close())
    await hub.drain(grace_seconds=3)
    await watcher
    assert all(s.closed is not None and s.closed[0] == CloseCode.GOING_AWAY for s in sockets)
    assert hub.connection_count() == 0


async def test_a_drain_closes_a_socket_whose_claim_is_under_way_once_it_is_answered(
    hub: Hub,
) -> None:
    idle_socket, busy_socket = Socket(), Socket()
    idle, _ = await hub.join("r1", viewer(1), idle_socket)
    busy, _ = await hub.join("r1", viewer(2), busy_socket)
    busy.carrying_out = True  # its claim's order is being written
    drain = asyncio.create_task(hub.drain(grace_seconds=3))
    await idle_socket.until_closed()
    await hub.leave(idle)
    assert busy_socket.closed is None
    assert busy.closing  # what else it sends is not carried out
    busy.push('{"type":"order.updated"}')  # its answer
    busy.answered()
    await busy_socket.until_closed()
    await hub.leave(busy)
    await drain
    assert busy_socket.of_type("order.updated") != []
    assert busy_socket.closed is not None
    assert busy_socket.closed[0] == CloseCode.GOING_AWAY


async def test_batched_viewers_get_one_frame_per_window_in_order(hub: Hub) -> None:
    batched, direct = Socket(), Socket()
    await hub.join("r1", viewer(1), batched, batched=True)
    await hub.join("r1", viewer(2), direct)
    for i in range(5):
        await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
    await direct.until_got("chat.message", 5)
    await batched.until_got("batch")
    events = batched.of_type("batch")[0]["events"]
    chat = [e for e in events if e["type"] == "chat.message"]  # counters may ride along
    assert [e["text"] for e in chat] == [f"m{i}" for i in range(5)]
    assert [e["seq"] for e in chat] == [f["seq"] for f in direct.of_type("chat.message")]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


async def test_a_lone_event_is_not_wrapped_and_closing_events_flush_first() -> None:
    hub = make_hub(MemoryBroker(MemoryBus()), counter_interval=60)  # no counters in between
    await hub.start()
    batched = Socket()
    await hub.join("r1", viewer(1), batched, batched=True)
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "solo"})
    await batched.until_got("chat.message")
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "last words"})
    await hub.publish_room_event("r1", {"type": "room.ended"})
    await batched.until_closed()
    await hub.close()
    final = [e["type"] for e in batched.of_type("batch")[-1]["events"]]
    assert final[-2:] == ["chat.message", "room.ended"]


async def test_a_viewer_banned_while_joining_does_not_get_in(hub: Hub) -> None:
    """The endpoint checks the stores for a ban before the join: a ban stored and told just
    after that check closed only the sockets already in the room, and the viewer joined."""
    watcher = Socket()
    await hub.join("r1", viewer(1), watcher)
    await hub.publish_room_event("r1", {"type": "user.banned", "user_id": "troll"})
    await watcher.until_got("user.banned")
    with pytest.raises(Banned):
        await hub.join("r1", Identity("troll", Role.SHOPPER), Socket())
    await hub.join("r1", Identity("troll", Role.MODERATOR), Socket())  # staff: not held
    await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "troll"})
    await watcher.until_got("user.unbanned")
    await hub.join("r1", Identity("troll", Role.SHOPPER), Socket())


async def test_a_ban_heard_long_ago_refuses_nobody(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stores are what count: an unban whose event was lost (its publish failed, or
    Redis lost the stream) kept refusing the user on this process for the rest of the show."""
    monkeypatch.setattr(room_state, "BAN_HEARD_SECONDS", 0.05)
    watcher = Socket()
    await hub.join("r1", viewer(1), watcher)
    await hub.publish_room_event("r1", {"type": "user.banned", "user_id": "troll"})
    await watcher.until_got("user.banned")
    await asyncio.sleep(0.1)  # unbanned in the stores meanwhile, its event lost
    await hub.join("r1", Identity("troll", Role.SHOPPER), Socket())
