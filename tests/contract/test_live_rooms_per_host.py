"""How many rooms one host may have live at once (MAX_LIVE_ROOMS_PER_HOST), in every room
store: exact however many of their rooms start together, and a place is free again once its
room ends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from server.adapters.memory import MemoryRoomStore
from server.adapters.mongo.stores import MongoRoomStore
from server.domain.errors import Conflict
from server.domain.rooms import MAX_LIVE_ROOMS_PER_HOST, Room, RoomStatus
from server.ports import RoomStore

T0 = datetime(2026, 5, 14, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def rooms(request: pytest.FixtureRequest) -> RoomStore:
    if request.param == "memory":
        return MemoryRoomStore()
    return MongoRoomStore(request.getfixturevalue("mongo_db"))


async def _scheduled(rooms: RoomStore, host: str, count: int) -> list[Room]:
    made = []
    for n in range(count):
        room = Room(f"{host}-r{n}", host, "Show", RoomStatus.SCHEDULED, T0 + timedelta(minutes=n))
        await rooms.create(room)
        made.append(room)
    return made


async def _start(rooms: RoomStore, room: Room) -> None:
    room.start(T0 + timedelta(hours=1))
    await rooms.save(room, expected_status=RoomStatus.SCHEDULED)


async def _live(rooms: RoomStore, host: str) -> list[str]:
    listed = await rooms.list(status=RoomStatus.LIVE, limit=100)
    return [room.id for room in listed if room.host_id == host]


async def test_a_host_starting_many_rooms_at_once_gets_exactly_the_most(rooms: RoomStore) -> None:
    mine = await _scheduled(rooms, "ana", MAX_LIVE_ROOMS_PER_HOST + 3)
    started = await asyncio.gather(*(_start(rooms, room) for room in mine), return_exceptions=True)
    refused = [error for error in started if isinstance(error, Conflict)]
    assert [error.code for error in refused] == ["too_many_live_rooms"] * 3
    assert len(await _live(rooms, "ana")) == MAX_LIVE_ROOMS_PER_HOST
    # Refused, it changed nothing: the room is still scheduled, to start once a place is free.
    left_out = [room for room, error in zip(mine, started, strict=True) if error is not None]
    assert {(await rooms.get(room.id)).status for room in left_out} == {RoomStatus.SCHEDULED}
    # Another host's rooms are theirs to start.
    (other,) = await _scheduled(rooms, "bo", 1)
    await _start(rooms, other)


async def test_a_room_that_ends_frees_its_place(rooms: RoomStore) -> None:
    mine = await _scheduled(rooms, "ana", MAX_LIVE_ROOMS_PER_HOST + 1)
    for room in mine[:-1]:
        await _start(rooms, room)
    waiting = mine[-1]
    with pytest.raises(Conflict) as refused:
        await _start(rooms, waiting)
    assert refused.value.code == "too_many_live_rooms"
    ended = await rooms.get(mine[0].id)
    ended.end(T0 + timedelta(hours=2))
    await rooms.save(ended, expected_status=RoomStatus.LIVE)
    waiting = await rooms.get(waiting.id)
    await _start(rooms, waiting)
    assert len(await _live(rooms, "ana")) == MAX_LIVE_ROOMS_PER_HOST
    # A scheduled room that ends never held a place.
    (never,) = await _scheduled(rooms, "cy", 1)
    never.end(T0)
    await rooms.save(never, expected_status=RoomStatus.SCHEDULED)
