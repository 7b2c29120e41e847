"""Fakes of the ports that are not under test (the channel layer, the clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any


async def wait_until(check: Callable[[], bool], changed: asyncio.Event, within: float) -> None:
    """Until `check` holds, looked at again each time `changed` is set (TimeoutError after
    `within` seconds)."""

    async def loop() -> None:
        while not check():
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(loop(), within)


class RecordingEvents:
    """Fake of the room event port and of private delivery: remembers what was published."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.controls: list[tuple[str, dict[str, Any]]] = []
        self.private: list[tuple[str, dict[str, Any]]] = []
        self.published_at: list[float] = []  # time.monotonic() of each event, in step with events
        self.gates: dict[tuple[str, str], float] = {}  # shared by every service using this fake
        self.closed_topics: set[tuple[str, str]] = set()
        self.topic_orders: dict[tuple[str, str], int] = {}

    async def publish_room_event(
        self,
        room_id: str,
        event: dict[str, Any],
        *,
        topic: str | None = None,
        last: bool = False,
        order: int | None = None,
    ) -> int:
        if topic is not None:
            if (room_id, topic) in self.closed_topics:
                return 0
            if order is not None:
                if order <= self.topic_orders.get((room_id, topic), -1):
                    return 0
                self.topic_orders[(room_id, topic)] = order
            if last:
                self.closed_topics.add((room_id, topic))
        self.events.append((room_id, event))
        self.published_at.append(time.monotonic())
        return len(self.events)

    async def publish_room_control(self, room_id: str, control: dict[str, Any]) -> None:
        self.controls.append((room_id, control))

    async def send_private(self, user_id: str, event: dict[str, Any]) -> None:
        self.private.append((user_id, event))

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        now = time.monotonic()
        if self.gates.get((room_id, name), 0.0) > now:
            return False
        self.gates[(room_id, name)] = now + seconds
        return True

    def of_type(self, *kinds: str) -> list[dict[str, Any]]:
        """Published room events of these types, in order."""
        return [event for _, event in self.events if event.get("type") in kinds]


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Later:
    """The `time` module as a process reads it, `seconds` on from now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._time, self._monotonic = time.time, time.monotonic  # as they are now

    def time(self) -> float:
        return self._time() + self.seconds

    def monotonic(self) -> float:
        return self._monotonic() + self.seconds
