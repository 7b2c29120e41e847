"""The hub's test doubles: a websocket as the hub sees it, brokers that lose frames or answer
late, and a hub on the in-process broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio

from channels.broker import CounterReport, Counters
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from server.domain.errors import NotFound
from server.domain.identity import Identity, Role
from server.domain.rooms import Room, RoomStatus
from server.metrics import Metrics
from tests.fakes import wait_until

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
        await wait_until(check, self.changed, within)

    async def until_got(self, kind: str, count: int = 1) -> None:
        """Until exactly `count` frames of the type have come."""
        await self.until(lambda: len(self.of_type(kind)) == count)

    async def until_closed(self) -> None:
        await self.until(lambda: self.closed is not None)


class LossyBroker(MemoryBroker):
    """Publishes as pub/sub may: the room frames holding one of the texts in `lose` reach no
    subscriber (the history keeps them)."""

    def __init__(self, bus: MemoryBus, lose: set[str]) -> None:
        super().__init__(bus)
        self.lose = {f'"text":"{text}"' for text in lose}

    def _deliver_room(self, room_id: str, text: str) -> None:
        if not any(lost in text for lost in self.lose):
            super()._deliver_room(room_id, text)


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


class SlowSubscribeBroker(MemoryBroker):
    """A Redis across a network: a user's subscribe is on its way until `subscribed` is set,
    and the next `failing` ones fail."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.subscribed = asyncio.Event()
        self.subscribed.set()
        self.failing = 0

    async def subscribe_user(self, user_id: str) -> None:
        await self.subscribed.wait()
        if self.failing:
            self.failing -= 1
            raise ConnectionError("Redis went away")
        await super().subscribe_user(user_id)


class SlowCountsBroker(MemoryBroker):
    """A Redis across a network: while `answered` is clear, a counter report is on its way to
    Redis (`counted_late`) or counted at once and its answer on its way back."""

    def __init__(self, bus: MemoryBus, *, counted_late: bool = False) -> None:
        super().__init__(bus)
        self.answered = asyncio.Event()
        self.answered.set()
        self.counted_late = counted_late
        self.likes_sent: list[int] = []  # each report's running total of likes, as sent
        self.sent = asyncio.Event()

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        self.likes_sent.append(report.likes)
        self.sent.set()
        if self.counted_late:
            await self.answered.wait()
        counters = await super().update_counters(room_id, report, kept=kept)
        await self.answered.wait()
        return counters


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


async def until_true(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never came true")
