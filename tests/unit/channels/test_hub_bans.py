"""Bans a room's process carries out from the stores: a ban stored whose `user.banned` was never
told (Redis away) is carried out at the room's next read of its settings, but for users whose
unban was heard while that read was on its way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from server.domain.identity import Identity, Role
from server.metrics import Metrics
from tests.unit.channels.hub_fakes import Socket, load_room, viewer


class Bans:
    """The stores' bans, read as a read of the room's settings begins; once `hold` is called,
    each later read waits for `release` after it has read them (`reading` is set then)."""

    def __init__(self, *banned: str) -> None:
        self.banned = set(banned)
        self.reading, self._release = asyncio.Event(), asyncio.Event()
        self._holding = False

    def hold(self) -> None:
        self._holding = True

    def release(self) -> None:
        self._release.set()

    async def load_settings(self, room_id: str) -> RoomView:
        read = frozenset(self.banned)
        if self._holding:
            self.reading.set()
            await self._release.wait()
        return replace(await load_room(room_id), banned=read)


@asynccontextmanager
async def hub_reading(bans: Bans) -> AsyncIterator[Hub]:
    limits = HubLimits(counter_interval=0.05)
    hub = Hub(
        MemoryBroker(MemoryBus()), load_room, Metrics(), limits, load_settings=bans.load_settings
    )
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close()


async def sent_away(socket: Socket) -> None:
    await socket.until_closed()
    assert socket.closed is not None
    assert socket.closed[0] == CloseCode.BANNED


async def test_a_ban_stored_while_it_could_not_be_told_is_carried_out_once_the_pubsub_is_back() -> (
    None
):
    """Redis away, the moderator's ban was stored and its `user.banned` never went out: the
    pub/sub's return reads the room's settings again, bans included."""
    bans = Bans()
    async with hub_reading(bans) as hub:
        troll, watcher, moderator = Socket(), Socket(), Socket()
        await hub.join("r1", viewer(1), troll, batched=True)  # batched or not, sent away
        await hub.join("r1", viewer(2), watcher)
        await hub.join("r1", Identity("mod-1", Role.MODERATOR), moderator)
        bans.banned.update({"user-1", "mod-1"})  # stored, untold
        hub.on_room_subscribed("r1")  # the pub/sub back
        await sent_away(troll)
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "after"})
        for socket in (watcher, moderator):  # staff answer to no ban
            await socket.until_got("chat.message")
            assert socket.closed is None


async def test_a_read_of_the_bans_an_unban_overtook_sends_nobody_away() -> None:
    """Read while the user was banned, and finished after their unban was heard and they came
    back: the read is out of date, and their new socket stays."""
    bans = Bans("user-1")
    async with hub_reading(bans) as hub:
        watcher = Socket()
        await hub.join("r1", viewer(2), watcher)
        bans.hold()
        hub.on_room_subscribed("r1")  # the pub/sub back: the settings read again
        await bans.reading.wait()
        bans.banned.clear()  # the moderator's unban: stored, then told
        await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "user-1"})
        await watcher.until_got("user.unbanned")
        back = Socket()
        await hub.join("r1", viewer(1), back)
        bans.release()
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "after the read"})
        await back.until_got("chat.message")
        assert back.closed is None


async def test_an_unban_of_someone_else_during_the_read_sends_the_banned_away_all_the_same() -> (
    None
):
    """user-1 was banned while Redis was away (stored, untold); the pub/sub's return reads the
    bans; meanwhile a moderator unbans user-3, someone else. user-1 is sent away still."""
    bans = Bans("user-1", "user-3")
    async with hub_reading(bans) as hub:
        troll, watcher = Socket(), Socket()
        await hub.join("r1", viewer(1), troll)
        await hub.join("r1", viewer(2), watcher)
        bans.hold()
        hub.on_room_subscribed("r1")  # the pub/sub back: the settings read again
        await bans.reading.wait()
        bans.banned.discard("user-3")
        await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "user-3"})
        await watcher.until_got("user.unbanned")
        bans.release()
        await sent_away(troll)


async def test_a_user_banned_again_untold_after_an_earlier_unban_is_sent_away() -> None:
    """Their unban heard long before the read began spares them nothing."""
    bans = Bans()
    async with hub_reading(bans) as hub:
        troll = Socket()
        await hub.join("r1", viewer(1), troll)
        await hub.publish_room_event("r1", {"type": "user.unbanned", "user_id": "user-1"})
        await troll.until_got("user.unbanned")
        bans.banned.add("user-1")  # banned again, stored, untold
        hub.on_room_subscribed("r1")  # the pub/sub back
        await sent_away(troll)
