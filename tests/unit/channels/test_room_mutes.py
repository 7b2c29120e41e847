"""A room's mutes on one process, as the stores hold them and the stream tells them: a mute
lifted (`user.unmute`) stays lifted when the process reads the room again."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from channels.broker_memory import MemoryBroker, MemoryBus
from channels.hub import Hub, HubLimits
from channels.room_state import LocalRoom, RoomView
from server.metrics import Metrics
from tests.unit.channels.hub_fakes import ROOM, Socket, viewer

BEFORE = datetime(2029, 1, 1, tzinfo=UTC)
UNTIL = datetime(2030, 1, 1, tzinfo=UTC)


def test_a_read_of_the_stores_drops_a_mute_they_no_longer_hold() -> None:
    """The stream lost (a new epoch) with its `user.unmuted`: the room is read again."""
    room = LocalRoom("r1")
    room.load(RoomView(ROOM, mutes={"user-1": UNTIL}), room.begin_read())
    room.load(RoomView(ROOM, mutes={}), room.begin_read())
    assert room.muted_until("user-1", BEFORE) is None


def test_a_read_older_than_a_mute_or_unmute_heard_meanwhile_does_not_undo_it() -> None:
    room = LocalRoom("r1")
    room.load(RoomView(ROOM, mutes={"user-1": UNTIL}), room.begin_read())
    before = room.begin_read()
    room.apply({"type": "user.unmuted", "user_id": "user-1"})
    room.apply({"type": "user.muted", "user_id": "user-2", "until": UNTIL.isoformat()})
    room.load(RoomView(ROOM, mutes={"user-1": UNTIL}), before)  # read before both
    assert room.muted_until("user-1", BEFORE) is None
    assert room.muted_until("user-2", BEFORE) == UNTIL


def test_of_two_reads_under_way_the_later_begun_is_kept() -> None:
    """An unmute stored whose `user.unmuted` never went out (its publish failed): the read
    that saw it lifted is not undone by an older one that finishes after it."""
    room = LocalRoom("r1")
    room.load(RoomView(ROOM, mutes={"user-1": UNTIL}), room.begin_read())
    older, newer = room.begin_read(), room.begin_read()
    room.take_mutes({}, newer)
    room.take_mutes({"user-1": UNTIL}, older)
    assert room.muted_until("user-1", BEFORE) is None
    older, newer = room.begin_read(), room.begin_read()
    room.take_mutes({"user-2": UNTIL}, older)  # the older finishing first is taken...
    room.take_mutes({}, newer)  # ...and then the newer
    assert room.mutes == {}


async def test_an_unmute_heard_while_the_settings_are_read_again_stays() -> None:
    """Blocked words or slow mode set over HTTP make every process read the room again; an
    unmute stored and told while that read was on its way came back with it."""
    held = {"user-1": UNTIL}  # what the stores hold
    reading, release = asyncio.Event(), asyncio.Event()
    reads = 0

    async def load_room(room_id: str) -> RoomView:
        nonlocal reads
        reads += 1
        view = RoomView(ROOM, mutes=dict(held))
        if reads > 3:  # after the open's three: the settings' read, it read the mute, then waits
            reading.set()
            await release.wait()
        return view

    hub = Hub(MemoryBroker(MemoryBus()), load_room, Metrics(), HubLimits(counter_interval=0.05))
    await hub.start()
    try:
        sock = Socket()
        _, room = await hub.join("r1", viewer(1), sock)
        assert room.muted_until("user-1", BEFORE) == UNTIL
        await hub.broker.publish_control("r1", {"type": "_settings_changed"})
        await asyncio.wait_for(reading.wait(), 2)
        held.clear()  # the moderator's user.unmute: stored, then told
        await hub.publish_room_event("r1", {"type": "user.unmuted", "user_id": "user-1"})
        await sock.until_got("user.unmuted")
        release.set()
        await asyncio.sleep(0.05)
        assert room.muted_until("user-1", BEFORE) is None
    finally:
        await hub.close()


def test_a_change_heard_during_a_read_leaves_only_its_own_setting_to_the_room() -> None:
    """One count for mutes and slow modes threw away a whole read for a mute of someone
    else: the read that was to bring a slow mode lifted (its event lost) was not taken."""
    room = LocalRoom("r1")
    room.load(RoomView(replace(ROOM, slow_mode_seconds=30)), room.begin_read())
    read = room.begin_read()
    room.apply({"type": "user.muted", "user_id": "user-3", "until": UNTIL.isoformat()})
    room.load(RoomView(replace(ROOM, slow_mode_seconds=0)), read)  # read before the mute
    assert room.slow_mode_seconds == 0
    assert room.muted_until("user-3", BEFORE) == UNTIL
    read = room.begin_read()
    room.apply({"type": "room.slow_mode", "seconds": 10})
    room.load(RoomView(replace(ROOM, slow_mode_seconds=0), mutes={}), read)  # user-3 unmuted
    assert room.slow_mode_seconds == 10
    assert room.muted_until("user-3", BEFORE) is None
