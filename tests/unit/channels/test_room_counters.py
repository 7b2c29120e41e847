"""A room's counters through the hub: likes and viewers summed across processes, told to the
room, kept where they outlive Redis, and each counted once through stops, slow or lost replies
and reports that land late."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from channels import hub as hub_module
from channels import room_counters
from channels.broker import CounterReport, Counters
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.hub import Hub, HubLimits
from channels.room_counters import CounterKeeper
from server.domain.errors import Unavailable
from server.metrics import Metrics
from tests.fakes import wait_until
from tests.unit.channels.hub_fakes import (
    SlowCountsBroker,
    Socket,
    load_room,
    make_hub,
    until_true,
    viewer,
)


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


async def one_here_three_there(staying: Hub, stopping: Hub) -> tuple[Socket, list[Socket]]:
    """A watcher on the process that stays, three viewers on the one that will stop; once the
    watcher has heard all four counted."""
    watcher = Socket()
    await staying.join("r1", viewer(0), watcher)
    movers = [Socket() for _ in range(3)]
    for n, socket in enumerate(movers, start=1):
        await stopping.join("r1", viewer(n), socket)
    await watcher.until(lambda: any(f["count"] == 4 for f in watcher.of_type("viewers")))
    return watcher, movers


async def test_a_draining_process_stops_counting_its_viewers_before_sending_them_away() -> None:
    bus = MemoryBus()
    staying, stopping = (make_hub(MemoryBroker(bus)) for _ in range(2))
    for hub in (staying, stopping):
        await hub.start()
    try:
        watcher, movers = await one_here_three_there(staying, stopping)
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


async def test_a_new_peak_is_kept_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept only every 10 s, a peak reached in a rush was lost to a Redis restart soon after."""
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", math.inf)  # a new peak alone
    kept: list[tuple[int, int]] = []
    written = asyncio.Event()

    async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        kept.append((likes, peak_viewers))
        written.set()
        return likes, peak_viewers

    async def kept_peak(peak: int) -> None:
        while not kept or kept[-1][1] != peak:
            written.clear()
            await written.wait()

    hub = Hub(
        MemoryBroker(MemoryBus()), load_room, Metrics(), HubLimits(counter_interval=0.05), keep
    )
    await hub.start()
    try:
        await hub.join("r1", viewer(1), Socket())
        await asyncio.wait_for(kept_peak(1), 2)
        await hub.join("r1", viewer(2), Socket())
        await asyncio.wait_for(kept_peak(2), 2)
    finally:
        await hub.close()


def viewers_told(socket: Socket, count: int) -> Callable[[], bool]:
    return lambda: any(f["count"] == count for f in socket.of_type("viewers"))


async def test_a_climbing_peak_is_kept_one_write_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keep on its way (a slow database) started none beside it, tick after tick."""
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", math.inf)  # a new peak alone
    kept: list[int] = []
    go = asyncio.Event()

    async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        kept.append(peak_viewers)
        await go.wait()
        return likes, peak_viewers

    hub = Hub(
        MemoryBroker(MemoryBus()), load_room, Metrics(), HubLimits(counter_interval=0.05), keep
    )
    await hub.start()
    try:
        watcher = Socket()
        await hub.join("r1", viewer(0), watcher)
        await until_true(lambda: kept == [1])
        for count in (2, 3):
            await hub.join("r1", viewer(count), Socket())
            await watcher.until(viewers_told(watcher, count))
        assert kept == [1]  # the first still on its way
        go.set()
        await until_true(lambda: kept[-1] == 3)
    finally:
        go.set()
        await hub.close()


class NeverFirst(MemoryBroker):
    """A process that never wins a gate: another always gets there first."""

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        return False


async def test_a_new_peak_is_kept_at_once_by_one_process_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every process reads the same peak: each one kept it at once, a write per tick apiece."""
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", math.inf)  # a new peak alone
    kept: dict[str, list[int]] = {"first": [], "never_first": []}

    def keeper(name: str) -> CounterKeeper:
        async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
            kept[name].append(peak_viewers)
            return likes, peak_viewers

        return keep

    bus, limits = MemoryBus(), HubLimits(counter_interval=0.05)
    first = Hub(MemoryBroker(bus), load_room, Metrics(), limits, keeper("first"))
    never_first = Hub(NeverFirst(bus), load_room, Metrics(), limits, keeper("never_first"))
    for hub in (first, never_first):
        await hub.start()
    try:
        watcher = Socket()
        await first.join("r1", viewer(0), watcher)
        for count in (2, 3):
            await never_first.join("r1", viewer(count), Socket())
            await watcher.until(viewers_told(watcher, count))
        await until_true(lambda: kept["first"][-1:] == [3])
        assert kept["never_first"] == []
    finally:
        for hub in (first, never_first):
            await hub.close()


class CountedReports(MemoryBroker):
    """Counts this process's counter reports: one a tick and room."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.reports = 0

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        self.reports += 1
        return await super().update_counters(room_id, report, kept=kept)


async def test_a_failing_database_is_asked_to_keep_a_peak_once_not_every_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed keep of a new peak waits for the period's, as any failed keep does."""
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", math.inf)  # a new peak alone
    asked: list[int] = []

    async def keep(room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        asked.append(peak_viewers)
        raise Unavailable("MongoDB away")

    broker = CountedReports(MemoryBus())
    hub = Hub(broker, load_room, Metrics(), HubLimits(counter_interval=0.05), keep)
    await hub.start()
    try:
        await hub.join("r1", viewer(1), Socket())
        await until_true(lambda: asked == [1])
        ticks = broker.reports
        await until_true(lambda: broker.reports >= ticks + 5)
        assert asked == [1]
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


class HeldViewersReport(MemoryBroker):
    """Once `hold` is set, the next report of viewers (more than none) reaches Redis only when
    `release` is set: a pooled connection busy, redis-py trying again after a dropped one."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.hold = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        if self.hold and report.viewers > 0:
            self.hold = False
            self.held.set()
            await self.release.wait()
        return await super().update_counters(room_id, report, kept=kept)


async def test_a_tick_landing_after_the_drain_began_does_not_count_the_movers_again() -> None:
    bus = MemoryBus()
    slow = HeldViewersReport(bus)
    staying, stopping = make_hub(MemoryBroker(bus)), make_hub(slow)
    for hub in (staying, stopping):
        await hub.start()
    try:
        _, movers = await one_here_three_there(staying, stopping)
        slow.hold = True  # a tick's report of 3 viewers is on its way...
        await asyncio.wait_for(slow.held.wait(), 1)
        draining = asyncio.create_task(stopping.drain(grace_seconds=2))
        for socket in movers:
            await socket.until_closed()
        for n in range(1, 4):
            await staying.join("r1", viewer(n), Socket())
        await asyncio.sleep(0.01)
        slow.release.set()  # ...and lands after the drain's "none here"
        await draining
        await asyncio.sleep(0.2)
        assert bus.counters["r1"].peak == 4
    finally:
        for hub in (staying, stopping):
            await hub.close()


class RepliesLost(MemoryBroker):
    """Counts the next report with likes, and then its reply is lost (it times out)."""

    lose_next = False

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        counters = await super().update_counters(room_id, report, kept=kept)
        if self.lose_next and report.likes:
            self.lose_next = False
            raise Unavailable("live data is unreachable, try again")
        return counters


async def test_likes_whose_report_timed_out_after_counting_are_counted_once() -> None:
    broker = RepliesLost(MemoryBus())
    hub = make_hub(broker, counter_interval=0.02)
    await hub.start()
    try:
        socket = Socket()
        _, room = await hub.join("r1", viewer(1), socket)
        broker.lose_next = True
        hub.add_likes(room, 10)
        await socket.until(lambda: any(f["count"] == 10 for f in socket.of_type("likes")))
        await asyncio.sleep(0.1)  # several ticks after the lost reply
        assert broker.bus.counters["r1"].likes == 10
    finally:
        await hub.close()


class CountersAway(MemoryBroker):
    """Redis away for the counters alone."""

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        raise Unavailable("redis went away")


async def test_a_room_closing_here_whose_last_likes_cannot_be_counted_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hub_module, "LINGER_SECONDS", 0.05)
    hub = Hub(CountersAway(MemoryBus()), load_room, Metrics(), HubLimits(counter_interval=0.05))
    await hub.start()
    try:
        conn, room = await hub.join("r1", viewer(1), Socket())
        hub.add_likes(room, 3)
        await hub.leave(conn)
        await until_true(lambda: "room_counters_not_left" in caplog.messages)
        assert hub.room("r1") is None
        (record,) = [r for r in caplog.records if r.message == "room_counters_not_left"]
        assert record.levelname == "WARNING"
        assert record.__dict__["error"] == "Unavailable"
    finally:
        await hub.close()
