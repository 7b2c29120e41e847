"""A room's end that its process stored but could not tell (it died, paused or lost Redis, and
the host never sent the end again) is told by housekeeping, in any process, once overdue:
once, whatever the number of processes, and a room that cannot be told keeps no other one
untold."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.domain.errors import Unavailable
from server.domain.identity import Identity, Role
from server.domain.rooms import END_TOLD_WITHIN, RoomStatus
from server.services import rooms as rooms_module
from server.services.rooms import RoomService
from tests.fakes import Clock
from tests.unit.services.test_give_back import FlakyEvents

HOST = Identity("host-1", Role.HOST)
T0 = datetime(2026, 5, 14, 10, 0, 0, 123456, tzinfo=UTC)


class Events(FlakyEvents):
    """A broker a round trip away, which may be cut (`away`), and which has a bug with some
    rooms (`broken_for`); its gates keep the test's clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.broken_for: set[str] = set()
        self.gates_until: dict[tuple[str, str], datetime] = {}

    async def publish_room_event(self, room_id: str, event: dict[str, Any], **how: Any) -> int:
        await asyncio.sleep(0.001)
        if room_id in self.broken_for:
            raise RuntimeError("a bug with this room")
        return await super().publish_room_event(room_id, event, **how)

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        if self.away:  # the gates are Redis's too
            raise Unavailable("live events are unavailable, try again")
        now = self.clock()
        if self.gates_until.get((room_id, name), now) > now:
            return False
        self.gates_until[(room_id, name)] = now + timedelta(seconds=seconds)
        return True

    def ends(self) -> list[str]:
        return [room_id for room_id, event in self.events if event["type"] == "room.ended"]


class Processes:
    """Server processes' room services over one store, one broker, one clock."""

    def __init__(self, count: int) -> None:
        self.rooms, self.clock = MemoryRoomStore(), Clock(T0)
        self.events = Events(self.clock)
        self.each = [
            RoomService(self.rooms, MemoryProductStore(), self.events, self.clock)
            for _ in range(count)
        ]

    async def live_room(self, title: str) -> str:
        room = await self.each[0].create_room(HOST, title)
        await self.each[0].start(room.id, HOST)
        return room.id

    async def end_untold(self, room_id: str) -> None:
        """The first process stores the room's end, and Redis goes away before it tells it."""
        self.events.away = True
        with pytest.raises(Unavailable):
            await self.each[0].end(room_id, HOST)
        self.events.away = False


async def test_an_end_its_process_could_not_tell_is_told_by_another_once_overdue() -> None:
    processes = Processes(2)
    told, untold = await processes.live_room("Told"), await processes.live_room("Untold")
    await processes.each[0].end(told, HOST)
    await processes.end_untold(untold)
    another = processes.each[1]
    processes.clock.advance(seconds=END_TOLD_WITHIN.total_seconds() - 1)
    assert await another.tell_untold_ends() == 0  # its own process may yet tell it
    processes.clock.advance(seconds=1)
    assert await another.tell_untold_ends() == 1
    processes.clock.advance(seconds=END_TOLD_WITHIN.total_seconds())
    assert await another.tell_untold_ends() == 0  # told once
    assert processes.events.ends() == [told, untold]


async def test_every_process_s_housekeeping_tells_an_overdue_end_once() -> None:
    processes = Processes(3)
    room_id = await processes.live_room("Room")
    await processes.end_untold(room_id)
    processes.clock.advance(seconds=END_TOLD_WITHIN.total_seconds())
    assert sum(await asyncio.gather(*(p.tell_untold_ends() for p in processes.each))) == 1
    assert processes.events.ends() == [room_id]


async def test_a_room_that_cannot_be_told_keeps_no_other_untold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processes = Processes(1)
    broken, other = await processes.live_room("Broken"), await processes.live_room("Other")
    for room_id in (broken, other):
        await processes.end_untold(room_id)
    processes.events.broken_for = {broken}
    processes.clock.advance(seconds=END_TOLD_WITHIN.total_seconds())
    for _ in range(30):  # half a minute of housekeeping rounds
        await processes.each[0].tell_untold_ends()
        processes.clock.advance(seconds=1)
    assert processes.events.ends() == [other]
    failures = [r for r in caplog.records if r.getMessage() == "room_end_tell_failed"]
    assert len(failures) == 1  # its traceback once a minute, not once a round


async def test_an_end_told_late_is_logged_once_however_long_redis_was_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processes = Processes(1)
    room_id = await processes.live_room("Room")
    await processes.end_untold(room_id)
    processes.clock.advance(seconds=END_TOLD_WITHIN.total_seconds())
    caplog.set_level(logging.WARNING, logger="liveshop.rooms")
    processes.events.away = True
    for _ in range(5):  # rounds while Redis is away: each fails, and says so once (_step)
        with pytest.raises(Unavailable):
            await processes.each[0].tell_untold_ends()
        processes.clock.advance(seconds=1)
    assert caplog.records == []
    processes.events.away = False
    assert await processes.each[0].tell_untold_ends() == 1
    assert [r.getMessage() for r in caplog.records] == ["room_end_told_late"]


async def test_rooms_that_cannot_be_told_fill_no_round(monkeypatch: pytest.MonkeyPatch) -> None:
    # Left out after the query, the rooms failing for a bug filled every round's batch.
    monkeypatch.setattr(rooms_module, "UNTOLD_ENDS_A_ROUND", 2)
    processes = Processes(1)
    broken = [await processes.live_room(f"Broken {n}") for n in range(2)]
    other = await processes.live_room("Other")
    for room_id in (*broken, other):
        await processes.end_untold(room_id)
        processes.clock.advance(seconds=1)  # the broken ones ended first
    processes.events.broken_for = set(broken)
    for _ in range(END_TOLD_WITHIN.seconds + 5):
        await processes.each[0].tell_untold_ends()
        processes.clock.advance(seconds=1)
    assert processes.events.ends() == [other]


class NotingFails(MemoryRoomStore):
    """A room store whose notes of an end told fail: MongoDB away."""

    async def end_told(self, room_id: str) -> None:
        raise Unavailable("the database is unreachable, try again")


async def test_an_end_told_whose_note_fails_answers_the_host_all_the_same() -> None:
    events = Events(Clock(T0))
    service = RoomService(NotingFails(), MemoryProductStore(), events, events.clock)
    room = await service.create_room(HOST, "Room")
    await service.start(room.id, HOST)
    ended = await service.end(room.id, HOST)  # not 503: the viewers were told
    assert ended.status is RoomStatus.ENDED
    assert events.ends() == [room.id]
