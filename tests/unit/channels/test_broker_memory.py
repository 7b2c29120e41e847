"""The in-process broker forgets what Redis would expire, so that a single process without Redis
that runs for months keeps only its recent rooms."""

from __future__ import annotations

import pytest

from channels import broker_memory
from channels.broker import KEPT_SECONDS, CounterReport, StreamPosition
from channels.broker_memory import SWEEP_EVERY_SECONDS, MemoryBroker, MemoryBus


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Monotonic:
    clock = Monotonic()
    monkeypatch.setattr(broker_memory, "time", clock)
    return clock


async def test_what_redis_would_expire_is_swept(clock: Monotonic) -> None:
    bus = MemoryBus(history_events=1000, history_seconds=600)
    broker = MemoryBroker(bus)
    for n in range(3):
        await broker.publish("show", {"type": "chat.message", "n": n})
    await broker.update_counters("show", CounterReport(1, 1, likes=5, likes_counted=0, viewers=1))
    assert await broker.try_gate("show", "stock:f_1", 0.5)
    assert await broker.take_turn("show", "chat:leo", 5, 1.0)
    assert await broker.take_spaced_turn("show", "slow-mode:leo", 10)
    epoch = (await broker.position("show")).epoch

    clock.now += 601 + SWEEP_EVERY_SECONDS  # past the history anyone is served
    await broker.publish("other", {"type": "chat.message"})  # any write sweeps
    assert (bus.gates, bus.turns) == ({}, {})
    assert list(bus.spaced_turns) == [("show", "slow-mode:leo")]  # kept an hour
    clock.now += 3600
    await broker.publish("other", {"type": "chat.message"})
    assert (bus.gates, bus.turns, bus.spaced_turns) == ({}, {}, {})
    assert len(bus.streams["show"].history) == 0
    assert await broker.position("show") == StreamPosition(3, epoch)
    assert (await broker.read_counters("show")).likes == 5

    clock.now += KEPT_SECONDS  # a day after the show's last write
    await broker.publish("other", {"type": "chat.message"})
    assert set(bus.streams) == {"other"}
    assert bus.counters == {}
    # As after Redis expired it: a new history, which viewers holding the old one detect.
    assert (await broker.position("show")).epoch != epoch


async def test_nothing_is_swept_more_than_once_a_minute(clock: Monotonic) -> None:
    bus = MemoryBus(history_seconds=600)
    broker = MemoryBroker(bus)
    await broker.publish("other", {"type": "chat.message"})
    clock.now += SWEEP_EVERY_SECONDS + 1
    await broker.publish("other", {"type": "chat.message"})  # swept here
    assert await broker.try_gate("show", "tell:f_1", 1)
    clock.now += 2  # the gate is open again, but the next sweep is a minute away
    assert await broker.try_gate("show", "tell:f_2", 1)
    assert set(bus.gates) == {("show", "tell:f_1"), ("show", "tell:f_2")}
