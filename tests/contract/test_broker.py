"""One contract for every broker: the in-process one and Redis (a real server).

Two broker instances on one backend stand for two server processes sharing a room.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from channels.broker import Broker
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.broker_redis import RedisBroker
from server.domain.errors import Unavailable
from tests.contract.test_broker_counters import report
from tests.fakes import wait_until
from tests.servers import RedisServer


@dataclass
class Recorder:
    """A broker listener that remembers everything it hears."""

    room_frames: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    user_frames: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_room_frame(self, room_id: str, text: str) -> None:
        self.room_frames.append((room_id, json.loads(text)))
        self.changed.set()

    def on_user_frame(self, user_id: str, text: str) -> None:
        self.user_frames.append((user_id, json.loads(text)))
        self.changed.set()

    def on_room_subscribed(self, room_id: str) -> None:
        self.subscribed.append(room_id)
        self.changed.set()

    async def wait_for(self, check: Callable[[], bool], within: float = 5.0) -> None:
        await wait_until(check, self.changed, within)

    async def wait_subscribed(self, room_id: str, times: int = 1, within: float = 5.0) -> None:
        """Until the room has been subscribed to `times` times (again after a reconnect)."""
        await self.wait_for(lambda: self.subscribed.count(room_id) >= times, within)

    async def wait_room_frames(self, count: int) -> None:
        await self.wait_for(lambda: len(self.room_frames) == count)


@dataclass
class Node:
    broker: Broker
    heard: Recorder


@dataclass
class Backend:
    a: Node
    b: Node
    lose_everything: Callable[[], Awaitable[None]]


async def _nodes(make: Callable[[], Broker]) -> tuple[Node, Node]:
    nodes = []
    for _ in range(2):
        broker, heard = make(), Recorder()
        broker.attach(heard)
        await broker.start()
        nodes.append(Node(broker, heard))
    return nodes[0], nodes[1]


@asynccontextmanager
async def _redis_nodes(url: str) -> AsyncIterator[tuple[Node, Node]]:
    """Two Redis brokers, as two processes have, closed afterwards."""
    nodes = await _nodes(lambda: RedisBroker(url))
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.broker.close()


@pytest_asyncio.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        bus = MemoryBus(history_events=50, history_seconds=600)
        a, b = await _nodes(lambda: MemoryBroker(bus))

        async def flush_memory() -> None:
            bus.flush()

        yield Backend(a, b, flush_memory)
    else:
        url = request.getfixturevalue("clean_redis")
        a, b = await _nodes(lambda: RedisBroker(url, history_events=50))
        admin = aioredis.Redis.from_url(url)

        async def flush_redis() -> None:
            await admin.flushall()

        yield Backend(a, b, flush_redis)
        await admin.aclose()
    for node in (a, b):
        await node.broker.close()


async def subscribe_both(backend: Backend, room: str) -> None:
    for node in (backend.a, backend.b):
        await node.broker.subscribe_room(room)
        await node.heard.wait_subscribed(room)


async def test_events_get_consecutive_seqs_and_reach_every_node_in_order(backend: Backend) -> None:
    await subscribe_both(backend, "r1")
    seqs = []
    for i in range(20):
        publisher = backend.a if i % 2 else backend.b
        seqs.append(await publisher.broker.publish("r1", {"type": "chat.message", "text": f"m{i}"}))
    assert seqs == list(range(1, 21))
    for node in (backend.a, backend.b):
        await node.heard.wait_room_frames(20)
        frames = [f for _, f in node.heard.room_frames]
        assert [f["seq"] for f in frames] == seqs
        assert [f["text"] for f in frames] == [f"m{i}" for i in range(20)]
        assert len({f["epoch"] for f in frames}) == 1


async def test_concurrent_publishers_never_share_a_seq(backend: Backend) -> None:
    results = await asyncio.gather(
        *(
            node.broker.publish("r2", {"type": "likes", "count": i})
            for i in range(50)
            for node in (backend.a, backend.b)
        )
    )
    assert sorted(results) == list(range(1, 101))


async def test_nothing_on_a_topic_follows_the_event_that_closed_it(backend: Backend) -> None:
    await subscribe_both(backend, "r-topic")
    a, b = backend.a.broker, backend.b.broker
    stock = {"type": "offer.stock", "offer_id": "f1", "remaining": 1}
    assert await a.publish("r-topic", stock, topic="f1") == 1
    ended = {"type": "offer.ended", "offer_id": "f1"}
    assert await b.publish("r-topic", ended, topic="f1", last=True) == 2
    # A figure read before the end and sent after it, from either node, is dropped.
    assert await a.publish("r-topic", stock, topic="f1") == 0
    assert await b.publish("r-topic", ended, topic="f1", last=True) == 0
    # Other topics, and events on none, go on.
    assert await a.publish("r-topic", {**stock, "offer_id": "f2"}, topic="f2") == 3
    assert await a.publish("r-topic", {"type": "chat.message", "text": "hi"}) == 4
    for node in (backend.a, backend.b):
        await node.heard.wait_room_frames(4)
        assert [f["seq"] for _, f in node.heard.room_frames] == [1, 2, 3, 4]
    position = await a.position("r-topic")
    assert position.seq == 4
    history = await b.history("r-topic", 0, position.epoch)
    assert history is not None
    assert [json.loads(frame)["type"] for frame in history] == [
        "offer.stock", "offer.ended", "offer.stock", "chat.message",
    ]  # fmt: skip


async def test_an_ordered_topic_drops_what_comes_late_or_twice(backend: Backend) -> None:
    await subscribe_both(backend, "r-order")
    a, b = backend.a.broker, backend.b.broker

    def figure(remaining: int) -> dict[str, object]:
        return {"type": "offer.stock", "offer_id": "f1", "remaining": remaining}

    v = 1_795_938_558_272_677  # a stock version: Redis's clock in microseconds, and counted on
    assert await a.publish("r-order", figure(8), topic="f1", order=v + 1) == 1
    # Read earlier and sent later, or the same figure from another node: dropped.
    assert await b.publish("r-order", figure(9), topic="f1", order=v) == 0
    assert await b.publish("r-order", figure(8), topic="f1", order=v + 1) == 0
    assert await b.publish("r-order", figure(7), topic="f1", order=v + 2) == 2
    # Each topic keeps its own order; events without one are not ordered.
    assert await a.publish("r-order", {**figure(3), "offer_id": "f2"}, topic="f2", order=1) == 3
    assert await a.publish("r-order", figure(0), topic="f1") == 4
    ended = {"type": "offer.ended", "offer_id": "f1"}
    assert await b.publish("r-order", ended, topic="f1", last=True) == 5
    assert await a.publish("r-order", figure(1), topic="f1", order=99) == 0
    for node in (backend.a, backend.b):
        await node.heard.wait_room_frames(5)
        heard = [(f["type"], f.get("remaining")) for _, f in node.heard.room_frames]
        assert heard == [
            ("offer.stock", 8), ("offer.stock", 7), ("offer.stock", 3), ("offer.stock", 0),
            ("offer.ended", None),
        ]  # fmt: skip


async def test_history_returns_missed_events_or_none_when_gone(backend: Backend) -> None:
    broker = backend.a.broker
    for i in range(10):
        await broker.publish("r3", {"type": "chat.message", "text": str(i)})
    position = await backend.b.broker.position("r3")
    assert position.seq == 10
    missed = await backend.b.broker.history("r3", 6, position.epoch)
    assert missed is not None
    assert [json.loads(f)["seq"] for f in missed] == [7, 8, 9, 10]
    assert await broker.history("r3", 10, position.epoch) == []
    assert await broker.history("r3", 6, "deadbeef") is None  # another epoch
    assert await broker.history("r3", 11, position.epoch) is None  # from the future


async def test_history_is_bounded_and_says_so(backend: Backend) -> None:
    broker = backend.a.broker
    for i in range(200):
        await broker.publish("r4", {"type": "chat.message", "text": str(i)})
    position = await broker.position("r4")
    assert await broker.history("r4", 1, position.epoch) is None
    recent = await broker.history("r4", 190, position.epoch)
    assert recent is not None
    assert len(recent) == 10


async def test_losing_the_backend_changes_the_epoch(backend: Backend) -> None:
    broker = backend.a.broker
    await broker.publish("r5", {"type": "chat.message", "text": "before"})
    before = await broker.position("r5")
    await backend.lose_everything()
    after = await broker.position("r5")
    assert after.epoch != before.epoch
    assert after.seq == 0
    assert await broker.history("r5", 0, before.epoch) is None
    assert await broker.publish("r5", {"type": "chat.message", "text": "after"}) == 1


async def test_private_frames_reach_only_the_users_subscribers(backend: Backend) -> None:
    await backend.b.broker.subscribe_user("u1")
    await backend.a.broker.subscribe_user("u2")
    await asyncio.sleep(0.1)  # SUBSCRIBE has no confirmation we wait on for users
    await backend.a.broker.publish_private("u1", {"type": "order.updated", "order_id": "o1"})
    await backend.b.heard.wait_for(lambda: len(backend.b.heard.user_frames) == 1)
    assert backend.b.heard.user_frames == [("u1", {"type": "order.updated", "order_id": "o1"})]
    await asyncio.sleep(0.1)
    assert backend.a.heard.user_frames == []


async def test_a_burst_of_private_frames_all_arrive_in_order(backend: Backend) -> None:
    # A flash sale's orders are written in batches, so their updates are published together
    # (the Redis broker sends them down one pipeline).
    users = [f"u{i}" for i in range(300)]
    for user in users:
        await backend.b.broker.subscribe_user(user)
    await asyncio.sleep(0.1)
    await asyncio.gather(
        *(
            backend.a.broker.publish_private(u, {"type": "order.updated", "n": i})
            for i, u in enumerate(users)
        )
    )
    await backend.b.heard.wait_for(lambda: len(backend.b.heard.user_frames) == len(users))
    assert backend.b.heard.user_frames == [
        (u, {"type": "order.updated", "n": i}) for i, u in enumerate(users)
    ]


async def test_control_frames_have_no_seq_and_no_history(backend: Backend) -> None:
    await subscribe_both(backend, "r6")
    await backend.a.broker.publish_control("r6", {"type": "_settings_changed"})
    await backend.b.heard.wait_room_frames(1)
    assert backend.b.heard.room_frames[0] == ("r6", {"type": "_settings_changed"})
    assert (await backend.a.broker.position("r6")).seq == 0


async def test_unsubscribed_nodes_hear_nothing(backend: Backend) -> None:
    await subscribe_both(backend, "r7")
    await backend.b.broker.unsubscribe_room("r7")
    await asyncio.sleep(0.1)
    await backend.a.broker.publish("r7", {"type": "chat.message", "text": "x"})
    await backend.a.heard.wait_room_frames(1)
    await asyncio.sleep(0.1)
    assert backend.b.heard.room_frames == []


# The limits below run on the broker's clock (Redis's): a period under test is either long
# enough that no stall of the machine can end it, or checked against the time that passed.


async def test_a_gate_opens_once_per_period_across_nodes(backend: Backend) -> None:
    a, b = backend.a.broker, backend.b.broker
    opened = await asyncio.gather(
        *(n.try_gate("r9", "likes", 60) for n in (a, b) for _ in range(5))
    )
    assert opened.count(True) == 1
    assert await a.try_gate("r9", "viewers", 60)  # another name, its own gate
    assert await a.try_gate("r9", "stock", 0.3)
    await asyncio.sleep(0.4)
    assert await b.try_gate("r9", "stock", 0.3)  # open again once its period is over


async def test_a_turn_is_counted_across_nodes(backend: Backend) -> None:
    a, b = backend.a.broker, backend.b.broker
    taken = await asyncio.gather(
        *(n.take_turn("r11", "chat:u1", 3, 0.001) for n in (a, b) for _ in range(4))
    )
    assert taken.count(True) == 3  # the burst, over both nodes
    assert await a.take_turn("r11", "chat:u2", 3, 0.001)  # another name, its own bucket
    assert not await b.take_turn("r11", "chat:u1", 3, 0.001)


async def test_turns_come_back_at_their_rate(backend: Backend) -> None:
    a, b = backend.a.broker, backend.b.broker
    started = time.monotonic()
    for _ in range(3):
        assert await a.take_turn("r11", "chat:u1", 3, 1.0)
    await asyncio.sleep(1.2)
    back = [await n.take_turn("r11", "chat:u1", 3, 1.0) for n in (b, a, b)]
    if time.monotonic() - started < 2:  # a turn a second: one is back, not two
        assert back == [True, False, False]
    else:  # the machine stalled: more may be back
        assert back[0]


async def test_a_spaced_turn_is_spaced_from_the_last_by_the_spacing_of_the_moment(
    backend: Backend,
) -> None:
    a, b = backend.a.broker, backend.b.broker
    taken = await asyncio.gather(
        *(n.take_spaced_turn("r12", "slow-mode:u1", 60) for n in (a, b) for _ in range(3))
    )
    assert taken.count(True) == 1  # over both nodes
    assert await a.take_spaced_turn("r12", "slow-mode:u2", 60)  # another name, its own
    await asyncio.sleep(0.3)
    assert not await b.take_spaced_turn("r12", "slow-mode:u1", 60)
    assert not await b.take_spaced_turn("r12", "slow-mode:u1", 120)  # raised: later still
    shortened = time.monotonic()
    assert await b.take_spaced_turn("r12", "slow-mode:u1", 0.25)  # shortened: due already
    again = await a.take_spaced_turn("r12", "slow-mode:u1", 0.25)
    if time.monotonic() - shortened < 0.25:  # else the machine stalled: either may be
        assert not again  # taken from now, not from the turn before


async def test_redis_restart_resubscribes_and_starts_a_new_epoch(
    redis_server: RedisServer,
) -> None:
    async with _redis_nodes(redis_server.url) as (a, b):
        for node in (a, b):
            await node.broker.subscribe_room("rr")
            await node.heard.wait_subscribed("rr")
        await a.broker.publish("rr", {"type": "chat.message", "text": "before"})
        old = await a.broker.position("rr")
        await asyncio.to_thread(redis_server.restart)
        # Each reader reconnects, re-subscribes and reports it, so the hub can look for gaps.
        for node in (a, b):
            await node.heard.wait_subscribed("rr", 2, 15)
        seq = await a.broker.publish("rr", {"type": "chat.message", "text": "after"})
        assert seq == 1
        await b.heard.wait_for(
            lambda: any(f.get("text") == "after" for _, f in b.heard.room_frames)
        )
        after = next(f for _, f in b.heard.room_frames if f.get("text") == "after")
        assert after["epoch"] != old.epoch


async def test_a_redis_reader_that_meets_an_unexpected_error_goes_on(
    clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _redis_nodes(clean_redis) as (a, b):
        await b.broker.subscribe_room("rx")
        await b.heard.wait_subscribed("rx")
        pubsub = b.broker._pubsub  # type: ignore[attr-defined]
        get_message, failures = pubsub.get_message, [RuntimeError("not a RedisError")]

        async def failing_once(**kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await get_message(**kwargs)

        monkeypatch.setattr(pubsub, "get_message", failing_once)
        await asyncio.sleep(1.5)  # the reader met it (its wait for a message lasts 1 s)
        assert not failures
        # A listener that fails on a frame (a bug of the hub's) loses that frame, no more.
        on_room_frame, bug_met = b.heard.on_room_frame, asyncio.Event()

        def buggy_once(room_id: str, text: str) -> None:
            if not bug_met.is_set():
                bug_met.set()
                raise KeyError("a bug")
            on_room_frame(room_id, text)

        monkeypatch.setattr(b.heard, "on_room_frame", buggy_once)
        await a.broker.publish("rx", {"type": "chat.message", "text": ""})
        await asyncio.wait_for(bug_met.wait(), 5)
        await a.broker.publish("rx", {"type": "chat.message", "text": "still heard"})
        await b.heard.wait_for(lambda: any(f.get("text") for _, f in b.heard.room_frames))


async def test_a_room_left_while_redis_is_away_is_not_subscribed_again(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _redis_nodes(redis_server.url) as (a, b):
        for room_id in ("left", "kept"):
            await b.broker.subscribe_room(room_id)
        await b.heard.wait_for(lambda: {"left", "kept"} <= set(b.heard.subscribed))
        pubsub = b.broker._pubsub  # type: ignore[attr-defined]

        async def unreachable(*args: Any) -> None:
            raise RedisConnectionError("Redis went away")

        with monkeypatch.context() as patched:
            patched.setattr(pubsub, "execute_command", unreachable)
            with pytest.raises(Unavailable):
                await b.broker.unsubscribe_room("left")
        await asyncio.to_thread(redis_server.restart)
        await b.heard.wait_subscribed("kept", 2, 15)
        for room_id in ("left", "kept"):
            await a.broker.publish(room_id, {"type": "chat.message", "text": room_id})
        await b.heard.wait_for(lambda: any(room == "kept" for room, _ in b.heard.room_frames))
        assert "left" not in b.heard.subscribed[2:]  # not subscribed again...
        assert all(room == "kept" for room, _ in b.heard.room_frames)  # ...nor heard


async def test_a_redis_out_of_memory_is_unavailable_and_changes_nothing(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await broker.publish("oom", {"type": "chat.message", "text": "before"})
        await admin.config_set("maxmemory", 1)  # below what it uses: every write is refused
        try:
            with pytest.raises(Unavailable):
                await broker.publish("oom", {"type": "chat.message", "text": "refused"})
            with pytest.raises(Unavailable):
                await broker.update_counters("oom", report(1, likes=5, viewers=3))
            assert (await broker.position("oom")).seq == 1
        finally:
            await admin.config_set("maxmemory", 0)
        assert (await broker.update_counters("oom", report(2, likes=5, viewers=3))).likes == 5
    finally:
        await admin.aclose()
        await broker.close()
