"""Background tasks: kept until done, failures logged, cancelled at close unless to finish."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.background import BackgroundTasks

log = logging.getLogger("test.background")


async def test_close_cancels_the_rest_and_waits_for_those_to_finish() -> None:
    tasks = BackgroundTasks(log, "task_failed")
    finished: list[str] = []

    async def work(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    waiting = tasks.spawn(work("waiting", 10))
    ending = tasks.spawn(work("ending", 0.05))
    tasks.finish_on_close(ending)
    await tasks.close()
    assert waiting.cancelled()
    assert finished == ["ending"]


async def test_an_unexpected_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks(log, "task_failed")

    async def fail() -> None:
        raise ConnectionError("gone")

    with caplog.at_level(logging.WARNING, logger="test.background"):
        tasks.spawn(fail())
        await asyncio.sleep(0.01)
    assert [record.getMessage() for record in caplog.records] == ["task_failed"]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[1] is not None
    assert str(record.exc_info[1]) == "gone"  # with its traceback, to find the bug by
    await tasks.close()
