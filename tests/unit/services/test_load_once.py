"""LoadOnce: a value is loaded once per key, however many callers ask at the same moment.
CoalescedRuns: each caller gets a run started after it asked, and callers asking meanwhile
share one."""

from __future__ import annotations

import asyncio

import pytest

from server.domain.errors import NotFound
from server.services.load_once import CoalescedRuns, LoadOnce
from tests.fakes import wait_until


class Source:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.missing: set[str] = set()

    async def load(self, key: str) -> str:
        self.loads.append(key)
        await self.gate.wait()
        if key in self.missing:
            raise NotFound(key)
        return key.upper()


async def test_callers_asking_together_share_one_load() -> None:
    source = Source()
    cache = LoadOnce(source.load, size=10)
    assert await asyncio.gather(*(cache.get("a") for _ in range(50))) == ["A"] * 50
    assert await cache.get("a") == "A"
    assert source.loads == ["a"]


async def test_a_failed_load_is_not_kept() -> None:
    source = Source()
    source.missing.add("a")
    cache = LoadOnce(source.load, size=10)
    results = await asyncio.gather(cache.get("a"), cache.get("a"), return_exceptions=True)
    assert all(isinstance(r, NotFound) for r in results)
    source.missing.clear()
    assert await cache.get("a") == "A"
    assert source.loads == ["a", "a"]


async def test_a_caller_going_away_does_not_cancel_the_load_for_the_others() -> None:
    source = Source()
    source.gate.clear()
    cache = LoadOnce(source.load, size=10)
    gone = asyncio.create_task(cache.get("a"))
    stays = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    source.gate.set()
    assert await stays == "A"
    assert source.loads == ["a"]


async def test_the_oldest_key_goes_when_full() -> None:
    source = Source()
    cache = LoadOnce(source.load, size=2)
    for key in ("a", "b", "c", "b", "a"):
        await cache.get(key)
    assert source.loads == ["a", "b", "c", "a"]


class Runs:
    """A run that reads `state` when it starts, and waits at `gate` before it answers."""

    def __init__(self) -> None:
        self.state = 0
        self.started: list[int] = []  # the state each run read
        self.changed = asyncio.Event()
        self.gate = asyncio.Event()
        self.failing = False

    async def run(self, key: str) -> int:
        read = self.state
        self.started.append(read)
        self.changed.set()
        await self.gate.wait()
        if self.failing:
            raise NotFound(key)
        return read


async def until_started(runs: Runs, count: int) -> None:
    await wait_until(lambda: len(runs.started) >= count, runs.changed, 1)


async def test_callers_asking_while_a_run_is_under_way_share_the_next_one() -> None:
    runs = Runs()
    rebuild = CoalescedRuns(runs.run)
    first = asyncio.create_task(rebuild("of1"))
    await until_started(runs, 1)
    runs.state = 1  # an order written after the first run read: the callers from now need it
    later = [asyncio.create_task(rebuild("of1")) for _ in range(50)]
    other = asyncio.create_task(rebuild("of2"))  # another key runs alongside
    await until_started(runs, 2)
    runs.gate.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [1] * 50  # one run, started after they asked
    assert await other == 1
    assert runs.started == [0, 1, 1]
    assert await rebuild("of1") == 1  # over: the next call starts a run of its own
    assert len(runs.started) == 4


async def test_a_failed_run_fails_its_callers_and_the_next_call_runs_again() -> None:
    runs = Runs()
    runs.failing = True
    rebuild = CoalescedRuns(runs.run)
    runs.gate.set()
    results = await asyncio.gather(rebuild("a"), rebuild("a"), return_exceptions=True)
    assert all(isinstance(r, NotFound) for r in results)
    runs.failing = False
    assert await rebuild("a") == 0


async def test_a_caller_going_away_does_not_cancel_the_run_for_the_others() -> None:
    runs = Runs()
    rebuild = CoalescedRuns(runs.run)
    gone = asyncio.create_task(rebuild("a"))
    stays = asyncio.create_task(rebuild("a"))
    await until_started(runs, 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    runs.gate.set()
    assert await stays == 0
    assert runs.started == [0]


async def test_a_run_cancelled_while_it_waits_its_turn_is_not_waited_for_again() -> None:
    runs = Runs()
    rebuild = CoalescedRuns(runs.run)
    first = asyncio.create_task(rebuild("a"))
    await until_started(runs, 1)
    second = asyncio.create_task(rebuild("a"))
    await asyncio.sleep(0)
    rebuild._waiting["a"].cancel()  # as the loop does when it shuts down
    with pytest.raises(asyncio.CancelledError):
        await second
    runs.gate.set()
    assert await first == 0
    assert await rebuild("a") == 0  # a run of its own, not the cancelled one
