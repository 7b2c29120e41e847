"""The broker's room counters, on every implementation: likes and viewers reported by each
process, added up across processes, counted once however a report is repeated or delayed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from channels import broker_memory
from channels.broker import (
    KEPT_SECONDS,
    REPORT_TRACE_SECONDS,
    STALE_SECONDS,
    Broker,
    CounterReport,
)
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.broker_redis import RedisBroker
from tests.fakes import Later


def report(
    number: int, *, likes: int = 0, viewers: int = 0, tally: int = 1, counted: int = 0
) -> CounterReport:
    return CounterReport(
        tally=tally, number=number, likes=likes, likes_counted=counted, viewers=viewers
    )


@dataclass
class Processes:
    a: Broker
    b: Broker
    lose_everything: Callable[[], Awaitable[None]]
    traces: Callable[[str], Awaitable[int]]  # what the room's counters remember of reports
    # As if `seconds` had passed since the room's counters were last written, by the clock
    # they are written on (the process's in memory, Redis's in Redis).
    age: Callable[[str, float], Awaitable[None]]


@pytest_asyncio.fixture(params=["memory", "redis"])
async def processes(request: pytest.FixtureRequest) -> AsyncIterator[Processes]:
    """Two processes' brokers on one memory bus or one real Redis."""
    if request.param == "memory":
        bus = MemoryBus()

        async def flush_memory() -> None:
            bus.flush()

        async def memory_traces(room_id: str) -> int:
            counters = bus.counters[room_id]
            return len(counters.tallies) + len(counters.numbers)

        later = Later(0)

        async def age_memory(room_id: str, seconds: float) -> None:
            later.seconds += seconds  # as in Redis, one aging adds to the last
            monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
            monkeypatch.setattr(broker_memory, "time", later)

        yield Processes(
            MemoryBroker(bus), MemoryBroker(bus), flush_memory, memory_traces, age_memory
        )
        return
    url = request.getfixturevalue("clean_redis")
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    a, b = RedisBroker(url), RedisBroker(url)

    async def flush_redis() -> None:
        await admin.flushall()

    async def redis_traces(room_id: str) -> int:
        return int(await admin.hlen(f"liveshop:{{{room_id}}}:reports"))

    async def age_redis(room_id: str, seconds: float) -> None:
        # Every trace and viewers' report holds "value:ms": written that much earlier.
        for name in ("reports", "viewers"):
            key = f"liveshop:{{{room_id}}}:{name}"
            for field, value in (await admin.hgetall(key)).items():
                kept, _, at = str(value).rpartition(":")
                await admin.hset(key, field, f"{kept}:{int(at) - int(seconds * 1000)}")

    try:
        yield Processes(a, b, flush_redis, redis_traces, age_redis)
    finally:
        for closing in (a, b):
            await closing.close()
        await admin.aclose()


async def test_counters_add_up_across_processes(processes: Processes) -> None:
    a, b = processes.a, processes.b
    first = await a.update_counters("r8", report(1, likes=3, viewers=10))
    assert (first.likes, first.viewers) == (3, 10)
    second = await b.update_counters("r8", report(1, likes=4, viewers=5))
    assert (second.likes, second.viewers, second.peak_viewers) == (7, 15, 15)
    third = await a.update_counters("r8", report(2, likes=3, viewers=0))
    assert (third.likes, third.viewers, third.peak_viewers) == (7, 5, 15)
    read = await b.read_counters("r8")
    assert (read.likes, read.viewers, read.peak_viewers) == (7, 5, 15)


async def test_counters_a_room_lost_start_from_what_was_kept(processes: Processes) -> None:
    a, b = processes.a, processes.b
    # No counters for the room (Redis lost or expired them): they go on from those kept.
    first = await a.update_counters("r10", report(1, likes=3, viewers=2), kept=(100, 7))
    assert (first.likes, first.viewers, first.peak_viewers) == (103, 2, 7)
    # Once they exist, another process's older idea of them changes nothing.
    second = await b.update_counters("r10", report(1, likes=1, viewers=9), kept=(90, 5))
    assert (second.likes, second.viewers, second.peak_viewers) == (104, 11, 11)


async def test_a_report_counted_twice_counts_its_likes_once(processes: Processes) -> None:
    # Sent again after its reply was lost (a timeout, a dropped connection): the same running
    # total, and the process still believes only what the last answered report counted.
    for _ in range(2):
        counters = await processes.a.update_counters("r1", report(1, likes=10, viewers=1))
    assert counters.likes == 10
    later = await processes.a.update_counters("r1", report(2, likes=12, viewers=1))
    assert later.likes == 12


async def test_a_report_overtaken_by_a_later_one_changes_nothing(processes: Processes) -> None:
    a, b = processes.a, processes.b
    await b.update_counters("r2", report(1, viewers=1))
    await a.update_counters("r2", report(1, likes=5, viewers=3))
    # The process stops serving the room: its last report says no viewers and 8 likes...
    await a.update_counters("r2", report(3, likes=8, viewers=0))
    # ...and then its tick's report, made before it, lands.
    late = await a.update_counters("r2", report(2, likes=6, viewers=3))
    assert (late.likes, late.viewers, late.peak_viewers) == (8, 1, 4)
    assert (await b.read_counters("r2")).viewers == 1


async def test_likes_not_counted_before_redis_lost_the_room_are_counted_after(
    processes: Processes,
) -> None:
    a = processes.a
    await a.update_counters("r3", report(1, likes=10, viewers=1))
    await processes.lose_everything()
    # 10 were counted (as the last answer said, and as kept), 4 were tapped since.
    counters = await a.update_counters(
        "r3", report(2, likes=14, counted=10, viewers=1), kept=(10, 1)
    )
    assert counters.likes == 14


async def test_each_opening_of_a_room_in_a_process_tallies_its_own_likes(
    processes: Processes,
) -> None:
    a = processes.a
    await a.update_counters("r4", report(1, likes=10, viewers=1, tally=1))
    await a.update_counters("r4", report(2, likes=10, viewers=0, tally=1))  # closed here
    counters = await a.update_counters("r4", report(3, likes=2, viewers=1, tally=2))  # again
    assert counters.likes == 12


async def test_what_is_kept_of_reports_is_forgotten_long_after_the_last(
    processes: Processes,
) -> None:
    a = processes.a
    for n in range(1, 4):  # the room opened and closed here three times
        await a.update_counters("r5", report(2 * n - 1, likes=1, viewers=1, tally=n))
        await a.update_counters("r5", report(2 * n, likes=1, viewers=0, tally=n))
    assert await processes.traces("r5") == 1 + 3  # the process's last number, three tallies
    await processes.age("r5", REPORT_TRACE_SECONDS - 60)
    await a.update_counters("r5", report(7, likes=1, viewers=1, tally=4))
    assert await processes.traces("r5") == 1 + 4  # not yet
    await processes.age("r5", 61)  # the first three tallies past it, the fourth a minute old
    counters = await a.update_counters("r5", report(8, likes=2, viewers=1, tally=4))
    assert (counters.likes, counters.viewers) == (5, 1)
    assert await processes.traces("r5") == 1 + 1  # the old tallies are gone


async def test_processes_whose_clocks_differ_count_the_same_viewers_in_redis(
    clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counters' times were each process's own: one whose clock ran 10 s ahead took the
    others' viewers for gone. (In memory, one process's clock is every broker's.)"""
    a, b = RedisBroker(clean_redis), RedisBroker(clean_redis)
    real, ahead = time.time, Later(STALE_SECONDS + 2).time
    try:
        seen = []
        for n in (1, 2):
            monkeypatch.setattr(time, "time", real)
            seen.append((await a.update_counters("r6", report(n, viewers=10))).viewers)
            monkeypatch.setattr(time, "time", ahead)  # b's clock
            seen.append((await b.update_counters("r6", report(n, viewers=5))).viewers)
        read = await b.read_counters("r6")  # as b reads them for the host's figures
        monkeypatch.setattr(time, "time", real)
        assert (seen, read.viewers) == ([10, 15, 15, 15], 15)
    finally:
        monkeypatch.setattr(time, "time", real)
        await a.close()
        await b.close()


async def test_a_process_that_stops_reporting_stops_counting(processes: Processes) -> None:
    a, b = processes.a, processes.b
    await b.update_counters("r11", report(1, viewers=5))  # then b dies
    await a.update_counters("r11", report(1, viewers=2))
    await processes.age("r11", STALE_SECONDS - 1)
    assert (await a.read_counters("r11")).viewers == 7
    await processes.age("r11", 2)
    assert (await a.read_counters("r11")).viewers == 0  # a's report is as old
    assert (await a.update_counters("r11", report(2, viewers=2))).viewers == 2


async def test_the_counters_keys_in_redis_outlive_the_room_by_a_day(clean_redis: str) -> None:
    broker, admin = RedisBroker(clean_redis), aioredis.Redis.from_url(clean_redis)
    try:
        await broker.update_counters("r12", report(1, likes=1, viewers=1))
        for name in ("counters", "viewers", "reports"):
            ttl = await admin.ttl(f"liveshop:{{r12}}:{name}")
            assert KEPT_SECONDS - 5 <= ttl <= KEPT_SECONDS, (name, ttl)
    finally:
        await broker.close()
        await admin.aclose()
