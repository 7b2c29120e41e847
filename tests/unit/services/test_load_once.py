"""LoadOnce: a value is loaded once per key, however many callers ask at the same moment."""

from __future__ import annotations

import asyncio

import pytest

from server.domain.errors import NotFound
from server.services.load_once import LoadOnce


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
