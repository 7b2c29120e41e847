"""The in-process broker: one server process, no Redis. Several brokers may share one
`MemoryBus` to stand in for several processes in tests.

What Redis would expire, the bus sweeps (at most once a minute, on the next write): a room's
stream and counters a day after they were last written, gates once they are open again, and
history that is no longer served. A process that runs for months keeps only its recent rooms.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from channels.broker import (
    KEPT_SECONDS,
    REPORT_TRACE_SECONDS,
    SPACED_TURNS_KEPT_SECONDS,
    STALE_SECONDS,
    BrokerListener,
    CounterReport,
    Counters,
    StreamPosition,
    encode_body,
    new_epoch,
    stamp,
)

SWEEP_EVERY_SECONDS = 60.0


@dataclass(slots=True)
class _Stream:
    epoch: str
    written_at: float  # time.monotonic() of the last publish, or of its creation
    seq: int = 0
    history: deque[tuple[int, float, str]] = field(default_factory=deque)
    closed_topics: set[str] = field(default_factory=set)
    topic_orders: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _RoomCounters:
    written_at: float  # time.monotonic()
    likes: int = 0
    peak: int = 0
    viewers: dict[str, tuple[int, float]] = field(default_factory=dict)
    # As in Redis's `reports` hash: each tally's likes counted, each node's last report taken,
    # each with when it was last written.
    tallies: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    numbers: dict[str, tuple[int, float]] = field(default_factory=dict)


class MemoryBus:
    """The shared state that Redis holds in the distributed case."""

    def __init__(self, history_events: int = 1000, history_seconds: float = 600) -> None:
        self.history_events = history_events
        self.history_seconds = history_seconds
        self.streams: dict[str, _Stream] = {}
        self.counters: dict[str, _RoomCounters] = {}
        self.gates: dict[tuple[str, str], float] = {}
        self.turns: dict[tuple[str, str], float] = {}  # when each bucket is full again
        self.spaced_turns: dict[tuple[str, str], float] = {}  # when each was last taken
        self.brokers: list[MemoryBroker] = []
        self._swept_at = time.monotonic()

    def stream(self, room_id: str) -> _Stream:
        stream = self.streams.get(room_id)
        if stream is None:
            stream = self.streams[room_id] = _Stream(new_epoch(), time.monotonic())
        return stream

    def sweep_if_due(self, now: float) -> None:
        """Forget what Redis would have expired by `now` (time.monotonic())."""
        if now - self._swept_at < SWEEP_EVERY_SECONDS:
            return
        self._swept_at = now
        forgotten = now - KEPT_SECONDS
        for room_id in [r for r, s in self.streams.items() if s.written_at < forgotten]:
            del self.streams[room_id]
        for room_id in [r for r, c in self.counters.items() if c.written_at < forgotten]:
            del self.counters[room_id]
        for gate in [g for g, until in self.gates.items() if until <= now]:
            del self.gates[gate]
        for turn in [t for t, full_at in self.turns.items() if full_at <= now]:
            del self.turns[turn]
        kept_since = now - SPACED_TURNS_KEPT_SECONDS
        for turn in [t for t, last in self.spaced_turns.items() if last <= kept_since]:
            del self.spaced_turns[turn]
        for stream in self.streams.values():
            _trim(stream.history, now - self.history_seconds, self.history_events)

    def flush(self) -> None:
        """Lose everything, as a Redis restart without persistence does."""
        self.streams.clear()
        self.counters.clear()
        self.gates.clear()
        self.turns.clear()
        self.spaced_turns.clear()


class MemoryBroker:
    def __init__(self, bus: MemoryBus | None = None) -> None:
        self.bus = bus or MemoryBus()
        self.node_id = new_epoch()
        self._listener: BrokerListener | None = None
        self._rooms: set[str] = set()
        self._users: set[str] = set()
        self.bus.brokers.append(self)

    def attach(self, listener: BrokerListener) -> None:
        self._listener = listener

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self in self.bus.brokers:
            self.bus.brokers.remove(self)

    async def ping(self) -> None:
        return None

    async def publish(
        self,
        room_id: str,
        event: dict[str, Any],
        *,
        topic: str | None = None,
        last: bool = False,
        order: int | None = None,
    ) -> int:
        body = encode_body(event)
        stream = self.bus.stream(room_id)
        if topic is not None:
            if topic in stream.closed_topics:
                return 0
            if order is not None:
                if order <= stream.topic_orders.get(topic, -1):
                    return 0
                stream.topic_orders[topic] = order
            if last:
                stream.closed_topics.add(topic)
                stream.topic_orders.pop(topic, None)
        stream.seq += 1
        frame = stamp(body, stream.seq, stream.epoch)
        now = time.monotonic()
        stream.written_at = now
        stream.history.append((stream.seq, now, frame))
        _trim(stream.history, now - self.bus.history_seconds, self.bus.history_events)
        self._deliver_room(room_id, frame)
        self.bus.sweep_if_due(now)
        return stream.seq

    async def publish_control(self, room_id: str, control: dict[str, Any]) -> None:
        self._deliver_room(room_id, encode_body(control))

    async def publish_private(self, user_id: str, event: dict[str, Any]) -> None:
        text = encode_body(event)
        loop = asyncio.get_running_loop()
        for broker in self.bus.brokers:
            if user_id in broker._users and broker._listener is not None:
                loop.call_soon(broker._listener.on_user_frame, user_id, text)

    def _deliver_room(self, room_id: str, text: str) -> None:
        # Delivered on the next loop iteration, as a network broker would: never re-entrantly.
        loop = asyncio.get_running_loop()
        for broker in self.bus.brokers:
            if room_id in broker._rooms and broker._listener is not None:
                loop.call_soon(broker._listener.on_room_frame, room_id, text)

    async def subscribe_room(self, room_id: str) -> None:
        self._rooms.add(room_id)
        if self._listener is not None:
            asyncio.get_running_loop().call_soon(self._listener.on_room_subscribed, room_id)

    async def unsubscribe_room(self, room_id: str) -> None:
        self._rooms.discard(room_id)

    async def subscribe_user(self, user_id: str) -> None:
        self._users.add(user_id)

    async def unsubscribe_user(self, user_id: str) -> None:
        self._users.discard(user_id)

    async def position(self, room_id: str) -> StreamPosition:
        stream = self.bus.stream(room_id)
        return StreamPosition(stream.seq, stream.epoch)

    async def history(self, room_id: str, after_seq: int, epoch: str) -> list[str] | None:
        stream = self.bus.stream(room_id)
        if epoch != stream.epoch or after_seq > stream.seq:
            return None
        if after_seq == stream.seq:
            return []
        now = time.monotonic()
        kept = [
            (seq, frame)
            for seq, at, frame in stream.history
            if seq > after_seq and at >= now - self.bus.history_seconds
        ]
        if not kept or kept[0][0] != after_seq + 1:
            return None
        return [frame for _, frame in kept]

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        now = time.monotonic()
        counters = self.bus.counters.get(room_id)
        if counters is None:
            counters = self.bus.counters[room_id] = _RoomCounters(now, likes=kept[0], peak=kept[1])
        counters.written_at = now
        tally = (self.node_id, report.tally)
        counted = counters.tallies.get(tally, (report.likes_counted, now))[0]
        counters.likes += max(0, report.likes - counted)
        counters.tallies[tally] = (max(counted, report.likes), now)
        if report.number > counters.numbers.get(self.node_id, (0, now))[0]:
            counters.numbers[self.node_id] = (report.number, now)
            if report.viewers > 0:
                counters.viewers[self.node_id] = (report.viewers, now)
            else:
                counters.viewers.pop(self.node_id, None)
        forgotten_before = now - REPORT_TRACE_SECONDS
        counters.tallies = {k: v for k, v in counters.tallies.items() if v[1] >= forgotten_before}
        counters.numbers = {k: v for k, v in counters.numbers.items() if v[1] >= forgotten_before}
        stale_before = now - STALE_SECONDS
        total = sum(n for n, at in counters.viewers.values() if at >= stale_before)
        counters.peak = max(counters.peak, total)
        return Counters(likes=counters.likes, viewers=total, peak_viewers=counters.peak)

    async def read_counters(self, room_id: str) -> Counters:
        counters = self.bus.counters.get(room_id, _RoomCounters(0.0))
        stale_before = time.monotonic() - STALE_SECONDS
        total = sum(n for n, at in counters.viewers.values() if at >= stale_before)
        return Counters(likes=counters.likes, viewers=total, peak_viewers=counters.peak)

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        now = time.monotonic()
        key = (room_id, name)
        if self.bus.gates.get(key, 0.0) > now:
            return False
        self.bus.gates[key] = now + seconds
        self.bus.sweep_if_due(now)
        return True

    async def take_turn(self, room_id: str, name: str, burst: int, per_second: float) -> bool:
        # As the Redis script does: the bucket kept as the time it is full again.
        now = time.monotonic()
        key = (room_id, name)
        interval = 1 / per_second
        full_at = self.bus.turns.get(key, now)
        if full_at - now > (burst - 1) * interval:
            return False
        self.bus.turns[key] = max(full_at, now) + interval
        self.bus.sweep_if_due(now)
        return True

    async def take_spaced_turn(self, room_id: str, name: str, seconds: float) -> bool:
        now = time.monotonic()
        key = (room_id, name)
        last = self.bus.spaced_turns.get(key)
        if last is not None and now - last < seconds:
            return False
        self.bus.spaced_turns[key] = now
        self.bus.sweep_if_due(now)
        return True


def _trim(history: deque[tuple[int, float, str]], before: float, most: int) -> None:
    """Drop the frames written before `before` (no longer served) and any beyond `most`."""
    while len(history) > most or (history and history[0][1] < before):
        history.popleft()
