"""GroupCommit: calls made while a batch is on its way go together in the next one."""

from __future__ import annotations

import asyncio

import pytest

from server.adapters.group_commit import GroupCommit
from server.domain.errors import Unavailable


class Recorder:
    """A write that records its batches and holds each one until released."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, key: str, items: list[int]) -> list[int | Exception]:
        self.batches.append((key, items))
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_a_lone_call_goes_at_once_and_calls_meanwhile_share_the_next_batch() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write)
    recorder.gate.clear()
    first = asyncio.create_task(group.submit("a", 0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.batches == [("a", [0])]  # on its way, nothing waited for company
    later = [asyncio.create_task(group.submit("a", i)) for i in (2, 4, 6)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [20, 40, 60]
    assert recorder.batches == [("a", [0]), ("a", [2, 4, 6])]


async def test_keys_are_batched_apart_and_results_go_to_their_callers() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write)
    results = await asyncio.gather(
        group.submit("a", 2), group.submit("b", 4), group.submit("a", 6), return_exceptions=True
    )
    assert list(results) == [20, 40, 60]
    assert sorted(recorder.batches) == [("a", [2, 6]), ("b", [4])]


async def test_an_item_error_reaches_only_its_caller() -> None:
    group = GroupCommit(Recorder().write)
    results = await asyncio.gather(
        group.submit("a", 2), group.submit("a", 3), group.submit("a", 4), return_exceptions=True
    )
    assert results[0] == 20
    assert results[2] == 40
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "odd 3"


async def test_a_failed_write_reaches_every_caller_of_the_batch_and_the_next_batch_runs() -> None:
    calls = 0

    async def flaky(key: str, items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return list(items)

    group = GroupCommit(flaky)
    failed = await asyncio.gather(
        group.submit("a", 1), group.submit("a", 2), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in failed)
    assert await group.submit("a", 3) == 3


async def test_a_write_with_the_wrong_number_of_results_fails_its_callers() -> None:
    async def short(key: str, items: list[int]) -> list[int | Exception]:
        return list(items[:1])

    group = GroupCommit(short)
    results = await asyncio.gather(
        group.submit("a", 1), group.submit("a", 2), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_batches_are_capped() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write, max_batch=2)
    assert await asyncio.gather(*(group.submit("a", i) for i in (0, 2, 4, 6, 8))) == [
        0,
        20,
        40,
        60,
        80,
    ]
    assert [items for _, items in recorder.batches] == [[0, 2], [4, 6], [8]]


async def test_a_caller_cancelled_before_its_batch_goes_takes_its_item_back() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write)
    gone = asyncio.create_task(group.submit("a", 2))
    stays = asyncio.create_task(group.submit("a", 4))
    await asyncio.sleep(0)  # both queued; the batch is not cut yet
    gone.cancel()
    assert await stays == 40
    assert gone.cancelled()
    assert recorder.batches == [("a", [4])]


async def test_a_caller_cancelled_once_its_batch_is_on_its_way_is_written_anyway() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write)
    recorder.gate.clear()
    gone = asyncio.create_task(group.submit("a", 2))
    stays = asyncio.create_task(group.submit("a", 4))
    for _ in range(3):  # the callers queue, then the batch is cut and sent
        await asyncio.sleep(0)
    assert recorder.batches == [("a", [2, 4])]
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    recorder.gate.set()
    assert await stays == 40
    await group.wait_idle()
    assert recorder.batches == [("a", [2, 4])]  # written all the same, as a sent request is


async def first_batch_failing_with(error: Exception) -> tuple[list[object], list[list[int]]]:
    """Calls 2 and 3 queued behind a first batch (call 1) that hangs, then fails with `error`;
    then call 4. Every call's answer, and the batches written."""
    batches: list[list[int]] = []
    hanging = asyncio.Event()

    async def write(key: str, items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if len(batches) == 1:
            await hanging.wait()
            raise error
        return list(items)

    group = GroupCommit(write)
    first = asyncio.create_task(group.submit("a", 1))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(group.submit("a", i)) for i in (2, 3)]
    await asyncio.sleep(0)
    hanging.set()
    answers = await asyncio.gather(first, *queued, return_exceptions=True)
    return [*answers, await group.submit("a", 4)], batches


@pytest.mark.parametrize("away", [TimeoutError("no answer in time"), Unavailable("unreachable")])
async def test_calls_queued_behind_a_batch_the_store_failed_fail_with_it(away: Exception) -> None:
    # A store that hangs, then times out: calls made meanwhile would each wait out another.
    answers, batches = await first_batch_failing_with(away)
    assert [type(answer) for answer in answers[:3]] == [type(away)] * 3
    assert answers[3] == 4  # made after the failure: tried afresh
    assert batches == [[1], [4]]


async def test_calls_queued_behind_a_batch_that_failed_otherwise_are_written() -> None:
    answers, batches = await first_batch_failing_with(ValueError("this batch's own trouble"))
    assert isinstance(answers[0], ValueError)
    assert answers[1:] == [2, 3, 4]
    assert batches == [[1], [2, 3], [4]]


async def test_each_caller_of_a_failed_batch_gets_its_own_error() -> None:
    async def down(key: str, items: list[int]) -> list[int | Exception]:
        raise ConnectionError("store down")

    group = GroupCommit(down)
    first, second = await asyncio.gather(
        group.submit("a", 1), group.submit("a", 2), return_exceptions=True
    )
    assert isinstance(first, ConnectionError)
    assert isinstance(second, ConnectionError)
    assert first is not second  # each raised in its own task, with its own traceback
    assert first.__cause__ is second.__cause__
    assert str(first) == str(second) == "store down"


async def test_wait_idle_waits_for_batches_in_flight() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.write)
    recorder.gate.clear()
    pending = asyncio.create_task(group.submit("a", 2))
    await asyncio.sleep(0)
    idle = asyncio.create_task(group.wait_idle())
    await asyncio.sleep(0.01)
    assert not idle.done()
    recorder.gate.set()
    await idle
    assert pending.done()
    assert pending.result() == 20
