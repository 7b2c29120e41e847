"""The hub with the in-process broker: fan-out, slow viewers, counters, bans and the end
(keeping in step with the stream: test_hub_stream.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from channels import hub as hub_module
from channels import room_counters
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from channels.errors import Draining, RoomEnded
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from server.domain.errors import NotFound, Unavailable
from server.metrics import Metrics
from tests.fakes import wait_until
from tests.unit.channels.hub_fakes import (
    ROOM,
    SlowCountsBroker,
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


async def test_unknown_room_is_refused(hub: Hub) -> None:
    with pytest.raises(NotFound):
        await hub.join("nope", viewer(1), Socket())
    assert hub.room("nope") is None


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


async def test_likes_are_summed_and_broadcast_once_per_interval(hub: Hub) -> None:
    socket = Socket()
    _, room = await hub.join("r1", viewer(1), socket)
    for _ in range(100):
        hub.add_likes(room, 3)
    await socket.until(lambda: any(f["count"] == 300 for f in socket.of_type("likes")))
    assert len(socket.of_type("likes")) == 1


async def test_viewer_counts_add_up_across_processes() -> None:
    bus = MemoryBus()
    hubs = [make_hub(MemoryBroker(bus)) for _ in range(2)]
    for hub in hubs:
        await hub.start()
    try:
        watcher = Socket()
        await hubs[0].join("r1", viewer(0), watcher)
        for n in range(1, 3):
            await hubs[0].join("r1", viewer(n), Socket())
        for n in range(3, 5):
            await hubs[1].join("r1", viewer(n), Socket())
        await watcher.until(lambda: any(f["count"] == 5 for f in watcher.of_type("viewers")))
    finally:
        for hub in hubs:
            await hub.close()


async def test_a_draining_process_stops_counting_its_viewers_before_sending_them_away() -> None:
    bus = MemoryBus()
    staying, stopping = (make_hub(MemoryBroker(bus)) for _ in range(2))
    for hub in (staying, stopping):
        await hub.start()
    try:
        watcher = Socket()
        await staying.join("r1", viewer(0), watcher)
        movers = [Socket() for _ in range(3)]
        for n, socket in enumerate(movers, start=1):
            await stopping.join("r1", viewer(n), socket)
        await watcher.until(lambda: any(f["count"] == 4 for f in watcher.of_type("viewers")))
        draining = asyncio.create_task(stopping.drain(grace_seconds=2))
        for socket in movers:  # closed 1001: they reconnect to the process that stays
            await socket.until_closed()
        for n in range(1, 4):
            await staying.join("r1", viewer(n), Socket())
        await draining
        await asyncio.sleep(0.2)  # several ticks of both processes
        counts = [frame["count"] for frame in watcher.of_type("viewers")]
        assert counts[-1] == 4
        assert max(counts) == 4, counts  # never counted twice, here and where they went
        assert bus.counters["r1"].peak == 4
    finally:
        for hub in (staying, stopping):
            await hub.close()


async def test_a_stop_reports_the_likes_since_the_last_tick_and_keeps_them() -> None:
    kept: list[tuple[int, int]] = []

    async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        kept.append((likes, peak_viewers))
        return likes, peak_viewers

    bus = MemoryBus()
    limits = HubLimits(counter_interval=60)  # no tick before the stop
    hub = Hub(MemoryBroker(bus), load_room, Metrics(), limits, keep)
    await hub.start()
    _, room = await hub.join("r1", viewer(1), Socket())
    hub.add_likes(room, 40)
    await hub.drain(grace_seconds=1)
    hub.add_likes(room, 2)  # tapped as its socket closed
    await hub.close()
    assert bus.counters["r1"].likes == 42  # each like once
    assert kept[-1][0] == 42


async def test_a_tick_under_way_at_close_still_counts_its_likes() -> None:
    broker = SlowCountsBroker(MemoryBus(), counted_late=True)
    hub = make_hub(broker, counter_interval=0.02)
    await hub.start()
    _, room = await hub.join("r1", viewer(1), Socket())
    broker.answered.clear()
    hub.add_likes(room, 7)
    # A tick has taken the likes, and its report is on its way to Redis.
    await wait_until(lambda: 7 in broker.likes_sent, broker.sent, 1)
    closing = asyncio.create_task(hub.close())
    await asyncio.sleep(0.05)
    broker.answered.set()
    await closing
    assert broker.bus.counters["r1"].likes == 7


async def test_a_stop_cut_short_by_a_slow_redis_never_counts_likes_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "LEAVE_SECONDS", 0.05)
    broker = SlowCountsBroker(MemoryBus())
    hub = make_hub(broker, counter_interval=60)  # no tick: only the stop reports
    await hub.start()
    socket = Socket()
    _, room = await hub.join("r1", viewer(1), socket)
    hub.add_likes(room, 10)
    broker.answered.clear()  # counted, but the answer never comes in time
    await hub.drain(grace_seconds=1)
    assert socket.closed is not None  # sent away without waiting for Redis
    broker.answered.set()
    await hub.close()
    assert broker.bus.counters["r1"].likes == 10


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


class UnsubscribeFails(MemoryBroker):
    """Pub/sub away as the room closes here: its counters are kept all the same."""

    async def unsubscribe_room(self, room_id: str) -> None:
        raise Unavailable("pub/sub went away")


@pytest.mark.parametrize("broker_class", [MemoryBroker, UnsubscribeFails])
async def test_likes_and_peak_are_kept_each_period_and_when_the_room_closes_here(
    monkeypatch: pytest.MonkeyPatch, broker_class: type[MemoryBroker]
) -> None:
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", 0.2)
    monkeypatch.setattr(hub_module, "LINGER_SECONDS", 0.1)
    kept: list[tuple[str, int, int]] = []
    written = asyncio.Event()

    async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        kept.append((room_id, likes, peak_viewers))
        written.set()
        return likes, peak_viewers

    async def kept_last(figures: tuple[str, int, int]) -> None:
        while not kept or kept[-1] != figures:
            written.clear()
            await written.wait()

    hub = Hub(
        broker_class(MemoryBus()), load_room, Metrics(), HubLimits(counter_interval=0.05), keep
    )
    await hub.start()
    try:
        _, room = await hub.join("r1", viewer(1), Socket())
        await hub.join("r1", viewer(2), Socket())
        hub.add_likes(room, 7)
        await asyncio.wait_for(kept_last(("r1", 7, 2)), 2)
        hub.add_likes(room, 1)
        await asyncio.wait_for(kept_last(("r1", 8, 2)), 2)
        writes = len(kept)
        await asyncio.sleep(0.5)
        assert len(kept) == writes  # nothing new: nothing written
        monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", 100.0)  # only closing keeps
        for conn in list(room.connections):
            await hub.leave(conn)
        hub.add_likes(room, 2)  # tapped as the last viewer left: kept when the room closes
        await asyncio.wait_for(kept_last(("r1", 10, 2)), 2)
    finally:
        await hub.close()


async def test_counters_redis_lost_start_again_from_what_every_process_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", 0.1)
    kept_two = asyncio.Event()

    async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        if likes == 2:
            kept_two.set()
        return 50, 9  # other processes kept more: the store answers the highest

    bus = MemoryBus()
    hub = Hub(MemoryBroker(bus), load_room, Metrics(), HubLimits(counter_interval=0.05), keep)
    await hub.start()
    try:
        socket = Socket()
        _, room = await hub.join("r1", viewer(1), socket)
        hub.add_likes(room, 2)
        await asyncio.wait_for(kept_two.wait(), 2)
        await asyncio.sleep(0)  # the store's answer noted
        del bus.counters["r1"]  # Redis lost them
        hub.add_likes(room, 1)
        await socket.until(lambda: any(f["count"] == 51 for f in socket.of_type("likes")))
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
