"""The hub with the in-process broker: fan-out, recovery, gaps, slow viewers, counters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from channels import hub as hub_module
from channels import room_counters
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from channels.errors import RoomEnded
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from server.domain.errors import NotFound, Unavailable
from server.domain.identity import Identity, Role
from server.domain.rooms import Room, RoomStatus
from server.metrics import Metrics

ROOM = Room("r1", "host-1", "Show", RoomStatus.LIVE, datetime(2026, 11, 28, tzinfo=UTC))


class Socket:
    """A websocket as the hub sees it; `stalled` makes it stop reading, like a slow phone."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str | None] | None = None
        self.stalled = asyncio.Event()
        self.stalled.set()
        self.changed = asyncio.Event()

    async def send_text(self, data: str) -> None:
        await self.stalled.wait()
        self.sent.append(data)
        self.changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)
        self.changed.set()

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.sent]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames() if f["type"] == kind]

    async def until(self, check: Callable[[], bool], within: float = 3.0) -> None:
        async def loop() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), within)


class LossyBroker(MemoryBroker):
    """Publishes as pub/sub may: the room frames holding one of the texts in `lose` reach no
    subscriber (the history keeps them)."""

    def __init__(self, bus: MemoryBus, lose: set[str]) -> None:
        super().__init__(bus)
        self.lose = {f'"text":"{text}"' for text in lose}

    def _deliver_room(self, room_id: str, text: str) -> None:
        if not any(lost in text for lost in self.lose):
            super()._deliver_room(room_id, text)


async def load_room(room_id: str) -> RoomView:
    if room_id != ROOM.id:
        raise NotFound("no such room")
    return RoomView(ROOM)


def make_hub(broker: MemoryBroker, **limits: Any) -> Hub:
    return Hub(broker, load_room, Metrics(), HubLimits(**{"counter_interval": 0.05, **limits}))


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = make_hub(MemoryBroker(MemoryBus()))
    await hub.start()
    yield hub
    await hub.close()


def viewer(n: int) -> Identity:
    return Identity(f"user-{n}", Role.SHOPPER, name=f"U{n}")


async def test_hello_first_then_events_encoded_once_for_everyone(hub: Hub) -> None:
    sockets = [Socket() for _ in range(3)]
    for n, socket in enumerate(sockets):
        await hub.join("r1", viewer(n), socket)
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "hi"})
    for socket in sockets:
        await socket.until(lambda s=socket: len(s.of_type("chat.message")) == 1)
        assert socket.frames()[0]["type"] == "hello"
    texts = [next(t for t in s.sent if "chat.message" in t) for s in sockets]
    assert all(text is texts[0] for text in texts)  # the very same string object


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


async def test_reconnect_with_since_recovers_what_was_missed(hub: Hub) -> None:
    first = Socket()
    conn, _ = await hub.join("r1", viewer(1), first)
    for i in range(3):
        await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
    await first.until(lambda: len(first.of_type("chat.message")) == 3)
    last = first.of_type("chat.message")[0]
    await hub.leave(conn)
    for i in range(3, 6):
        await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
    again = Socket()
    await hub.join("r1", viewer(1), again, since=last["seq"], epoch=last["epoch"])
    await again.until(lambda: len(again.of_type("chat.message")) == 5)
    hello = again.frames()[0]
    assert hello["type"] == "hello"
    assert hello["recovered"] is True
    assert [f["text"] for f in again.of_type("chat.message")] == [f"m{i}" for i in range(1, 6)]
    seqs = [f["seq"] for f in again.frames()[1:]]
    assert seqs == sorted(seqs)


async def test_reconnect_with_another_epoch_is_told_to_reload(hub: Hub) -> None:
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "x"})
    socket = Socket()
    await hub.join("r1", viewer(1), socket, since=0, epoch="00000000")
    await socket.until(lambda: len(socket.sent) >= 1)
    assert socket.frames()[0]["recovered"] is False


async def test_a_gap_on_pub_sub_is_filled_from_history_in_order() -> None:
    bus = MemoryBus()
    hub = make_hub(MemoryBroker(bus))
    await hub.start()
    try:
        socket = Socket()
        await hub.join("r1", viewer(1), socket)
        publisher = LossyBroker(bus, lose={"m2", "m3"})
        for i in range(1, 6):
            await publisher.publish("r1", {"type": "chat.message", "text": f"m{i}"})
        await socket.until(lambda: len(socket.of_type("chat.message")) == 5)
        assert [f["seq"] for f in socket.of_type("chat.message")] == [1, 2, 3, 4, 5]
    finally:
        await hub.close()


async def test_a_lost_last_event_is_found_by_the_periodic_check() -> None:
    bus = MemoryBus()
    hub = make_hub(MemoryBroker(bus))
    await hub.start()
    try:
        socket = Socket()
        await hub.join("r1", viewer(1), socket)
        lossy = LossyBroker(bus, lose={"only"})
        await lossy.publish("r1", {"type": "chat.message", "text": "only"})
        await socket.until(lambda: len(socket.of_type("chat.message")) == 1)
    finally:
        await hub.close()


async def test_lost_history_sends_viewers_away_to_reload() -> None:
    bus = MemoryBus()
    hub = make_hub(MemoryBroker(bus))
    await hub.start()
    try:
        socket = Socket()
        await hub.join("r1", viewer(1), socket)
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "before"})
        await socket.until(lambda: len(socket.of_type("chat.message")) == 1)
        bus.flush()  # Redis restarted without persistence
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "after"})
        await socket.until(lambda: socket.closed is not None)
        assert socket.closed is not None
        assert socket.closed[0] == CloseCode.RESYNC
    finally:
        await hub.close()


async def test_a_process_that_finds_history_lost_reads_the_room_again() -> None:
    # Events of the new epoch published before this process noticed the loss are in no history
    # it can read: no hello may show an offer that ended meanwhile, not even to a viewer who
    # reconnects the moment it is sent away.
    offers = [{"id": "f1", "remaining": 3, "stock_version": 5}]
    reads, read_again = 0, asyncio.Event()

    async def load(room_id: str) -> RoomView:
        nonlocal reads
        reads += 1
        if reads > 2:  # past each process's first read: the reads after the loss are slow
            await read_again.wait()
        return RoomView(ROOM, offers=[dict(offer) for offer in offers])

    bus = MemoryBus()
    hubs = [Hub(MemoryBroker(bus), load, Metrics(), HubLimits(counter_interval=0.05)) for _ in "ab"]
    for hub in hubs:
        await hub.start()
    try:
        viewer_a = Socket()
        await hubs[0].join("r1", viewer(1), viewer_a)
        await hubs[1].join("r1", viewer(2), Socket())
        bus.flush()  # Redis restarted without persistence
        offers.clear()  # the offer's end, stored...
        ended = {"type": "offer.ended", "offer_id": "f1", "reason": "stopped"}
        await hubs[1].publish_room_event("r1", ended)  # ...and told, in the new epoch
        await asyncio.sleep(0.2)
        assert viewer_a.closed is None  # sent away only once the room is read again
        newcomer = Socket()
        joining = asyncio.create_task(hubs[0].join("r1", viewer(3), newcomer))
        await asyncio.sleep(0.1)
        assert not joining.done()  # newcomers wait for it too
        read_again.set()
        await joining
        await viewer_a.until(lambda: viewer_a.closed is not None)
        await newcomer.until(lambda: bool(newcomer.sent))
        assert newcomer.frames()[0]["room"]["offers"] == []
    finally:
        for hub in hubs:
            await hub.close()


class FarBroker(MemoryBroker):
    """A Redis across a network: the history's reply is on its way until `replied` is set."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.replied = asyncio.Event()
        self.replied.set()

    async def history(self, room_id: str, after_seq: int, epoch: str) -> list[str] | None:
        frames = await super().history(room_id, after_seq, epoch)
        await self.replied.wait()
        return frames


async def test_a_loss_found_while_catching_up_leaves_the_room_hearing() -> None:
    # The process is reading history for a lost frame when it finds the history itself lost
    # (its pub/sub re-subscribed after a Redis restart). A room once stayed holding back every
    # event for good after that: chat between processes stopped (found in a chaos run).
    reads, read_again = 0, asyncio.Event()

    async def load(room_id: str) -> RoomView:
        nonlocal reads
        reads += 1
        if reads > 1:
            await read_again.wait()
        return await load_room(room_id)

    bus = MemoryBus()
    far = FarBroker(bus)
    a = Hub(far, load, Metrics(), HubLimits(counter_interval=0.02))
    b = make_hub(LossyBroker(bus, lose={"two"}))
    for hub in (a, b):
        await hub.start()
    try:
        sent_away = Socket()
        await a.join("r1", viewer(1), sent_away)
        await b.join("r1", viewer(2), Socket())
        far.replied.clear()
        for text in ("one", "two", "three"):  # "two" is lost on its way to A
            await b.publish_room_event("r1", {"type": "chat.message", "text": text})
        await asyncio.sleep(0.05)  # "three" has come: A asks the history for "two"
        bus.flush()  # Redis restarted without persistence
        a.on_room_subscribed("r1")  # A's pub/sub is back: it finds the history lost
        await asyncio.sleep(0.1)  # it is reading the room again
        far.replied.set()  # the old history comes back while the room is read again
        await asyncio.sleep(0.1)
        read_again.set()
        await sent_away.until(lambda: sent_away.closed is not None)
        newcomer = Socket()
        await a.join("r1", viewer(3), newcomer)
        await b.publish_room_event("r1", {"type": "chat.message", "text": "heard?"})
        await newcomer.until(lambda: bool(newcomer.of_type("chat.message")))
        assert [f["text"] for f in newcomer.of_type("chat.message")] == ["heard?"]
        assert a.metrics.stream_resets._value.get() == 1  # one loss, one reset
    finally:
        for hub in (a, b):
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
        await healthy.until(lambda: len(healthy.of_type("chat.message")) == 30)
        await stuck.until(lambda: stuck.closed is not None)
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
    await target.until(lambda: target.closed is not None)
    assert target.closed is not None
    assert target.closed[0] == CloseCode.BANNED
    assert target.of_type("user.banned")
    await other.until(lambda: len(other.of_type("user.banned")) == 1)
    assert other.closed is None


async def test_room_end_closes_everyone_and_refuses_newcomers(hub: Hub) -> None:
    socket = Socket()
    await hub.join("r1", viewer(1), socket)
    await hub.publish_room_event("r1", {"type": "room.ended"})
    await socket.until(lambda: socket.closed is not None)
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
        await socket.until(lambda s=socket: len(s.of_type("order.updated")) == 1)
    await asyncio.sleep(0.05)
    assert stranger.of_type("order.updated") == []


async def test_drain_closes_everyone_with_going_away(hub: Hub) -> None:
    sockets = [Socket() for _ in range(3)]
    conns = [(await hub.join("r1", viewer(n), s))[0] for n, s in enumerate(sockets)]

    async def endpoint_notices_close() -> None:
        for socket, conn in zip(sockets, conns, strict=True):
            await socket.until(lambda s=socket: s.closed is not None)
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
    await direct.until(lambda: len(direct.of_type("chat.message")) == 5)
    await batched.until(lambda: len(batched.of_type("batch")) == 1)
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
    await batched.until(lambda: len(batched.of_type("chat.message")) == 1)
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "last words"})
    await hub.publish_room_event("r1", {"type": "room.ended"})
    await batched.until(lambda: batched.closed is not None)
    await hub.close()
    final = [e["type"] for e in batched.of_type("batch")[-1]["events"]]
    assert final[-2:] == ["chat.message", "room.ended"]
