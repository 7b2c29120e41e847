"""Bans a room's process carries out from the stores: a ban stored whose `user.banned` was never
told (Redis away) is carried out at the room's next read of its settings, but for users whose
unban was heard while that read was on its way."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from server.domain.identity import Identity, Role
from server.metrics import Metrics
from tests.unit.channels.hub_fakes import Socket, load_room, viewer


async def test_a_ban_stored_while_it_could_not_be_told_is_carried_out_once_the_pubsub_is_back() -> (
    None
):
    """Redis away, the moderator's ban was stored and its `user.banned` never went out: the
    pub/sub's return reads the room's settings again, bans included."""
    banned: set[str] = set()

    async def load_settings(room_id: str) -> RoomView:
        return replace(await load_room(room_id), banned=frozenset(banned))

    hub = Hub(
        MemoryBroker(MemoryBus()),
        load_room,
        Metrics(),
        HubLimits(counter_interval=0.05),
        load_settings=load_settings,
    )
    await hub.start()
    try:
        troll, watcher, moderator = Socket(), Socket(), Socket()
        await hub.join("r1", viewer(1), troll, batched=True)  # batched or not, sent away
        await hub.join("r1", viewer(2), watcher)
        await hub.join("r1", Identity("mod-1", Role.MODERATOR), moderator)
        banned.update({"user-1", "mod-1"})  # stored, untold
        hub.on_room_subscribed("r1")  # the pub/sub back
        await troll.until_closed()
        assert troll.closed is not None
        assert troll.closed[0] == CloseCode.BANNED
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "after"})
        for socket in (watcher, moderator):  # staff answer to no ban
            await socket.until_got("chat.message")
            assert socket.closed is None
    finally:
        await hub.close()


async def test_a_read_of_the_bans_an_unban_overtook_sends_nobody_away() -> None:
    """Read while the user was banned, and finished after their unban was heard and they came
    back: the read is out of date, and their new socket stays."""
    banned: set[str] = {"user-1"}
    reading, release = asyncio.Event(), asyncio.Event()
    slow = False

    async def load_settings(room_id: str) -> RoomView:
        read = frozenset(banned)
        if slow:
            reading.set()
            await release.wait()
        return replace(await load_room(room_id), banned=read)

    hub = Hub(
        MemoryBroker(MemoryBus()),
        load_room,
        Metrics(),
        HubLimits(counter_interval=0.05),
        load_settings=load_settings,
    )
    await hub.start()
    try:
        watcher = Socket()
        await hub.join("r1", viewer(2), watcher)
        slow = True
        hub.on_room_subscribed("r1")  # the pub/sub back: the settings read again
        await reading.wait()
        banned.clear()  # the moderator's unban: stored, then told
        await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "user-1"})
        await watcher.until_got("user.unbanned")
        back = Socket()
        await hub.join("r1", viewer(1), back)
        release.set()
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "after the read"})
        await back.until_got("chat.message")
        assert back.closed is None
    finally:
        await hub.close()


async def test_an_unban_of_someone_else_during_the_read_sends_the_banned_away_all_the_same() -> (
    None
):
    """user-1 was banned while Redis was away (stored, untold); the pub/sub's return reads the
    bans; meanwhile a moderator unbans user-3, someone else. user-1 must still be sent away."""
    banned: set[str] = {"user-1", "user-3"}
    reading, release = asyncio.Event(), asyncio.Event()
    slow = [False]  # a list: set from the test, read in load_settings

    async def load_settings(room_id: str) -> RoomView:
        read = frozenset(banned)
        if slow[0]:
            reading.set()
            await release.wait()
        return replace(await load_room(room_id), banned=read)

    hub = Hub(
        MemoryBroker(MemoryBus()),
        load_room,
        Metrics(),
        HubLimits(counter_interval=0.05),
        load_settings=load_settings,
    )
    await hub.start()
    try:
        troll, watcher = Socket(), Socket()
        await hub.join("r1", viewer(1), troll)
        await hub.join("r1", viewer(2), watcher)
        slow[0] = True
        hub.on_room_subscribed("r1")  # the pub/sub back: the settings read again
        await reading.wait()
        banned.discard("user-3")
        await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "user-3"})
        await watcher.until_got("user.unbanned")
        release.set()
        await troll.until_closed()
        assert troll.closed is not None
        assert troll.closed[0] == CloseCode.BANNED
    finally:
        await hub.close()


async def test_a_user_banned_again_untold_after_an_earlier_unban_is_sent_away() -> None:
    """Their unban heard long before the read began spares them nothing."""
    banned: set[str] = set()

    async def load_settings(room_id: str) -> RoomView:
        return replace(await load_room(room_id), banned=frozenset(banned))

    hub = Hub(
        MemoryBroker(MemoryBus()),
        load_room,
        Metrics(),
        HubLimits(counter_interval=0.05),
        load_settings=load_settings,
    )
    await hub.start()
    try:
        troll = Socket()
        await hub.join("r1", viewer(1), troll)
        await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "user-1"})
        await troll.until_got("user.unbanned")
        banned.add("user-1")  # banned again, stored, untold
        hub.on_room_subscribed("r1")  # the pub/sub back
        await troll.until_closed()
        assert troll.closed is not None
        assert troll.closed[0] == CloseCode.BANNED
    finally:
        await hub.close()
