"""The hub keeping in step with a room's stream: recovery on reconnect, gaps filled from
history, and a history lost (a Redis restart) found by one check or several at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from channels.hub import Hub, HubLimits
from channels.hub_stream import RoomLoader
from channels.room_state import RoomView
from server.domain.errors import Unavailable
from server.domain.identity import Identity, Role
from server.domain.times import iso_z
from server.metrics import Metrics
from tests.unit.channels.hub_fakes import (
    ROOM,
    FarBroker,
    LossyBroker,
    Socket,
    load_room,
    make_hub,
    until_true,
    viewer,
)


@asynccontextmanager
async def two_processes(load: RoomLoader) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two processes on one Redis, the first with the room open (a moderator's socket)."""
    bus = MemoryBus()
    a, b = (Hub(MemoryBroker(bus), load, Metrics(), HubLimits()) for _ in range(2))
    for hub in (a, b):
        await hub.start()
    try:
        await a.join("r1", Identity("mod", Role.MODERATOR), Socket())
        yield a, b
    finally:
        for hub in (a, b):
            await hub.close()


async def opening_held_at_its_read(hub: Hub, reading: asyncio.Event) -> asyncio.Task[Any]:
    """A viewer joining on `hub`, its room's opening waiting, its read of the stores done,
    until `reading` is set."""
    reading.clear()
    joining = asyncio.create_task(hub.join("r1", viewer(2), Socket()))
    await asyncio.sleep(0.01)
    return joining


def bus_of(hub: Hub) -> MemoryBus:
    """The in-process Redis the hub's broker is on, for other processes' brokers to share."""
    assert isinstance(hub.broker, MemoryBroker)
    return hub.broker.bus


async def test_reconnect_with_since_recovers_what_was_missed(hub: Hub) -> None:
    first = Socket()
    conn, _ = await hub.join("r1", viewer(1), first)
    for i in range(3):
        await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
    await first.until(lambda: len(first.of_type("chat.message")) == 3)
    last = first.of_type("chat.message")[0]
    await hub.leave(conn)
    for i in range(3, 6):
        await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
    again = Socket()
    await hub.join("r1", viewer(1), again, since=last["seq"], epoch=last["epoch"])
    await again.until(lambda: len(again.of_type("chat.message")) == 5)
    hello = again.frames()[0]
    assert hello["type"] == "hello"
    assert hello["recovered"] is True
    assert [f["text"] for f in again.of_type("chat.message")] == [f"m{i}" for i in range(1, 6)]
    seqs = [f["seq"] for f in again.frames()[1:]]
    assert seqs == sorted(seqs)


async def test_a_moderator_may_delete_the_lines_replayed_to_them_by_another_process() -> None:
    """A moderator whose process went away reconnects to another with `since`, and is sent
    the lines they missed: that process opened the room after they were said, and fanned out
    none of them, but they are the moderator's to delete."""
    bus = MemoryBus()
    a, b = (Hub(MemoryBroker(bus), load_room, Metrics(), HubLimits()) for _ in range(2))
    for hub in (a, b):
        await hub.start()
    moderator = Identity("mod", Role.MODERATOR)
    try:
        await a.join("r1", viewer(1), Socket())
        first = Socket()
        conn, _ = await a.join("r1", moderator, first)
        await first.until_got("hello")
        hello = first.frames()[0]
        await a.leave(conn)
        for event in (
            {"type": "chat.message", "id": "m1", "text": "fake watches"},
            {"type": "chat.message", "id": "m2", "text": "hello"},
            {"type": "chat.deleted", "message_id": "m2"},
        ):
            await a.publish_room_event("r1", event)
        again = Socket()
        _, room = await b.join("r1", moderator, again, since=hello["seq"], epoch=hello["epoch"])
        await again.until_got("chat.deleted")
        assert (room.knows_message("m1"), room.knows_message("m2")) == (True, False)
    finally:
        for hub in (a, b):
            await hub.close()


async def test_a_line_deleted_while_a_moderators_replay_is_read_stays_deleted() -> None:
    bus = MemoryBus()
    a, far = Hub(MemoryBroker(bus), load_room, Metrics(), HubLimits()), FarBroker(bus)
    b = Hub(far, load_room, Metrics(), HubLimits())
    for hub in (a, b):
        await hub.start()
    moderator = Identity("mod", Role.MODERATOR)
    try:
        first = Socket()
        conn, _ = await a.join("r1", moderator, first)
        await first.until_got("hello")
        hello = first.frames()[0]
        await a.leave(conn)
        await a.publish_room_event("r1", {"type": "chat.message", "id": "m1", "text": "spam"})
        await b.join("r1", viewer(1), Socket())
        far.replied.clear()  # the moderator's replay is on its way...
        again = Socket()
        since = {"since": hello["seq"], "epoch": hello["epoch"]}
        joining = asyncio.create_task(b.join("r1", moderator, again, **since))
        await asyncio.sleep(0.05)
        await a.publish_room_event("r1", {"type": "chat.deleted", "message_id": "m1"})
        await asyncio.sleep(0.05)  # ...when another moderator's deletion is heard here
        far.replied.set()
        _, room = await joining
        await again.until_got("chat.deleted")
        assert not room.knows_message("m1")
    finally:
        for hub in (a, b):
            await hub.close()


async def test_reconnect_with_another_epoch_is_told_to_reload(hub: Hub) -> None:
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "x"})
    socket = Socket()
    await hub.join("r1", viewer(1), socket, since=0, epoch="00000000")
    await socket.until(lambda: len(socket.sent) >= 1)
    assert socket.frames()[0]["recovered"] is False


async def test_a_gap_on_pub_sub_is_filled_from_history_in_order(hub: Hub) -> None:
    socket = Socket()
    await hub.join("r1", viewer(1), socket)
    publisher = LossyBroker(bus_of(hub), lose={"m2", "m3"})
    for i in range(1, 6):
        await publisher.publish("r1", {"type": "chat.message", "text": f"m{i}"})
    await socket.until(lambda: len(socket.of_type("chat.message")) == 5)
    assert [f["seq"] for f in socket.of_type("chat.message")] == [1, 2, 3, 4, 5]


async def test_a_lost_last_event_is_found_by_the_periodic_check(hub: Hub) -> None:
    socket = Socket()
    await hub.join("r1", viewer(1), socket)
    lossy = LossyBroker(bus_of(hub), lose={"only"})
    await lossy.publish("r1", {"type": "chat.message", "text": "only"})
    await socket.until(lambda: len(socket.of_type("chat.message")) == 1)


async def test_lost_history_sends_viewers_away_to_reload(hub: Hub) -> None:
    socket = Socket()
    await hub.join("r1", viewer(1), socket)
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "before"})
    await socket.until(lambda: len(socket.of_type("chat.message")) == 1)
    bus_of(hub).flush()  # Redis restarted without persistence
    await hub.publish_room_event("r1", {"type": "chat.message", "text": "after"})
    await socket.until(lambda: socket.closed is not None)
    assert socket.closed is not None
    assert socket.closed[0] == CloseCode.RESYNC


async def test_a_process_that_finds_history_lost_reads_the_room_again() -> None:
    # Events of the new epoch published before this process noticed the loss are in no history
    # it can read: no hello may show an offer that ended meanwhile, not even to a viewer who
    # reconnects the moment it is sent away.
    offers = [{"id": "f1", "remaining": 3, "stock_version": 5}]
    reads, read_again = 0, asyncio.Event()

    async def load(room_id: str) -> RoomView:
        nonlocal reads
        reads += 1
        if reads > 6:  # past each process's three reads as it opens the room: those after the
            # loss are slow
            await read_again.wait()
        return RoomView(ROOM, offers=[dict(offer) for offer in offers])

    bus = MemoryBus()
    hubs = [Hub(MemoryBroker(bus), load, Metrics(), HubLimits(counter_interval=0.05)) for _ in "ab"]
    for hub in hubs:
        await hub.start()
    try:
        viewer_a = Socket()
        await hubs[0].join("r1", viewer(1), viewer_a)
        await hubs[1].join("r1", viewer(2), Socket())
        bus.flush()  # Redis restarted without persistence
        offers.clear()  # the offer's end, stored...
        ended = {"type": "offer.ended", "offer_id": "f1", "reason": "stopped"}
        await hubs[1].publish_room_event("r1", ended)  # ...and told, in the new epoch
        await asyncio.sleep(0.2)
        assert viewer_a.closed is None  # sent away only once the room is read again
        newcomer = Socket()
        joining = asyncio.create_task(hubs[0].join("r1", viewer(3), newcomer))
        await asyncio.sleep(0.1)
        assert not joining.done()  # newcomers wait for it too
        read_again.set()
        await joining
        await viewer_a.until(lambda: viewer_a.closed is not None)
        await newcomer.until(lambda: bool(newcomer.sent))
        assert newcomer.frames()[0]["room"]["offers"] == []
    finally:
        for hub in hubs:
            await hub.close()


async def test_a_loss_found_while_catching_up_leaves_the_room_hearing() -> None:
    # The process is reading history for a lost frame when it finds the history itself lost
    # (its pub/sub re-subscribed after a Redis restart). A room once stayed holding back every
    # event for good after that: chat between processes stopped (found in a chaos run).
    reads, read_again = 0, asyncio.Event()

    async def load(room_id: str) -> RoomView:
        nonlocal reads
        reads += 1
        if reads > 3:  # past the three reads of the room's opening: the read after the loss
            await read_again.wait()
        return await load_room(room_id)

    bus = MemoryBus()
    far = FarBroker(bus)
    a = Hub(far, load, Metrics(), HubLimits(counter_interval=0.02))
    b = make_hub(LossyBroker(bus, lose={"two"}))
    for hub in (a, b):
        await hub.start()
    try:
        sent_away = Socket()
        await a.join("r1", viewer(1), sent_away)
        await b.join("r1", viewer(2), Socket())
        far.replied.clear()
        for text in ("one", "two", "three"):  # "two" is lost on its way to A
            await b.publish_room_event("r1", {"type": "chat.message", "text": text})
        await asyncio.sleep(0.05)  # "three" has come: A asks the history for "two"
        bus.flush()  # Redis restarted without persistence
        a.on_room_subscribed("r1")  # A's pub/sub is back: it finds the history lost
        await asyncio.sleep(0.1)  # it is reading the room again
        far.replied.set()  # the old history comes back while the room is read again
        await asyncio.sleep(0.1)
        read_again.set()
        await sent_away.until(lambda: sent_away.closed is not None)
        newcomer = Socket()
        await a.join("r1", viewer(3), newcomer)
        await b.publish_room_event("r1", {"type": "chat.message", "text": "heard?"})
        await newcomer.until(lambda: bool(newcomer.of_type("chat.message")))
        assert [f["text"] for f in newcomer.of_type("chat.message")] == ["heard?"]
        assert a.metrics.stream_resets._value.get() == 1  # one loss, one reset
    finally:
        for hub in (a, b):
            await hub.close()


async def test_what_is_published_while_a_process_opens_the_room_reaches_its_state() -> None:
    """The process read the room from the stores, then took the stream's position: a slow
    mode, a mute or an offer's end published in between was counted in the position, and
    never applied to the room there, for as long as it stayed open."""
    store: dict[str, Any] = {"slow": 0, "mutes": {}, "offers": [{"id": "o1", "remaining": 5}]}
    reading = asyncio.Event()
    reading.set()

    async def load(room_id: str) -> RoomView:
        room = replace(ROOM, slow_mode_seconds=store["slow"])
        offers, mutes = list(store["offers"]), dict(store["mutes"])
        await reading.wait()  # the other reads: pinned product, offers, mutes
        return RoomView(room, None, mutes, offers)

    async with two_processes(load) as (a, b):
        joining = await opening_held_at_its_read(b, reading)  # slow mode, offers, mutes read
        until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        store["slow"] = 30  # stored, then published, as the endpoint does
        await a.publish_room_event("r1", {"type": "room.slow_mode", "seconds": 30})
        store["mutes"]["u2"] = until
        muted = {"type": "user.muted", "user_id": "u2", "until": iso_z(until)}
        await a.publish_room_event("r1", muted)
        store["offers"] = []
        ended = {"type": "offer.ended", "offer_id": "o1", "reason": "sold_out"}
        await a.publish_room_event("r1", ended)
        reading.set()
        await joining
        room = b.room("r1")
        assert room is not None
        assert room.slow_mode_seconds == 30
        assert room.muted_until("u2", datetime.now(UTC)) == until
        assert "o1" not in room.offers


async def test_a_process_whose_pub_sub_was_away_reads_the_rooms_settings_again() -> None:
    """A change of blocked words is told to the other processes, not kept in the stream: one
    whose pub/sub was away when it was told kept the old words until the room closed there."""
    words: list[str] = []

    async def load(room_id: str) -> RoomView:
        return RoomView(replace(ROOM, blocked_words=list(words)))

    hub = Hub(MemoryBroker(MemoryBus()), load, Metrics(), HubLimits())
    await hub.start()
    try:
        await hub.join("r1", viewer(1), Socket())
        words.append("scam")  # set on another process while this one's pub/sub was away
        hub.on_room_subscribed("r1")  # back
        room = hub.room("r1")
        assert room is not None
        await until_true(lambda: room.blocked_words == ["scam"])
    finally:
        await hub.close()


async def test_blocked_words_told_while_a_process_opens_the_room_reach_it() -> None:
    """Stored after the opening's read, and told before its subscription was heard: lost."""
    words: list[str] = []
    reading = asyncio.Event()
    reading.set()

    async def load(room_id: str) -> RoomView:
        room = replace(ROOM, blocked_words=list(words))
        await reading.wait()  # the rest of the read (pinned product, offers, mutes)
        return RoomView(room)

    async with two_processes(load) as (a, b):
        joining = await opening_held_at_its_read(b, reading)  # its blocked words read
        words.append("scam")  # stored, then told, as RoomService.set_blocked_words does
        await a.publish_room_control("r1", {"type": "settings_changed"})
        reading.set()
        await joining
        room = b.room("r1")
        assert room is not None
        await until_true(lambda: room.blocked_words == ["scam"])


async def test_a_read_of_the_settings_does_not_undo_a_slow_mode_heard_meanwhile() -> None:
    slow = 0
    reading = asyncio.Event()
    reading.set()

    async def load(room_id: str) -> RoomView:
        room = replace(ROOM, slow_mode_seconds=slow)
        await reading.wait()
        return RoomView(room)

    hub = Hub(MemoryBroker(MemoryBus()), load, Metrics(), HubLimits())
    await hub.start()
    try:
        watcher = Socket()
        _, room = await hub.join("r1", viewer(1), watcher)
        reading.clear()
        hub.on_room_subscribed("r1")  # the pub/sub back: the settings read again, slowly
        await asyncio.sleep(0.01)
        slow = 30  # a moderator's slow mode: stored, then told
        await hub.publish_room_event("r1", {"type": "room.slow_mode", "seconds": 30})
        await watcher.until_got("room.slow_mode")
        reading.set()  # the read, begun before, lands
        await asyncio.sleep(0.05)
        assert room.slow_mode_seconds == 30
    finally:
        await hub.close()


async def test_a_room_opens_with_its_first_read_when_the_second_fails() -> None:
    """And reads its settings again at each tick until a read goes through: blocked words set
    while it opened would otherwise stay unknown here for the rest of the show."""
    reads = 0

    async def load(room_id: str) -> RoomView:
        nonlocal reads
        reads += 1
        if reads == 3:  # the settings read again once subscribed: MongoDB away
            raise Unavailable("the database is unreachable, try again")
        words = [] if reads < 3 else ["scam"]  # set while the room opened
        return RoomView(replace(ROOM, slow_mode_seconds=5, blocked_words=words))

    hub = Hub(MemoryBroker(MemoryBus()), load, Metrics(), HubLimits(counter_interval=0.02))
    await hub.start()
    try:
        _, room = await hub.join("r1", viewer(1), Socket())
        assert room.slow_mode_seconds == 5
        await until_true(lambda: room.blocked_words == ["scam"])
    finally:
        await hub.close()


async def test_the_settings_alone_are_read_again_not_the_whole_room() -> None:
    """The room's pinned product and its open offers with their stock (a Redis read each) are
    not what a read of the settings needs: at each room's opening, and each settings change."""
    whole, settings_only = 0, 0

    async def load(room_id: str) -> RoomView:
        nonlocal whole
        whole += 1
        return RoomView(ROOM)

    async def load_settings(room_id: str) -> RoomView:
        nonlocal settings_only
        settings_only += 1
        return RoomView(replace(ROOM, blocked_words=["scam"]))

    hub = Hub(MemoryBroker(MemoryBus()), load, Metrics(), HubLimits(), load_settings=load_settings)
    await hub.start()
    try:
        _, room = await hub.join("r1", viewer(1), Socket())
        # The settings are read before the stream's position is taken (a room that does not
        # exist leaves nothing in Redis), and again once subscribed.
        assert (whole, settings_only, room.blocked_words) == (1, 2, ["scam"])
        await hub.publish_room_control("r1", {"type": "settings_changed"})
        await until_true(lambda: settings_only == 3)
        assert whole == 1
    finally:
        await hub.close()
