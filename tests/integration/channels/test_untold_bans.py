"""A ban stored whose `user.banned` never went out (Redis away when the moderator sent it): the
next read of the room's settings, which the pub/sub's return makes (and a change of blocked
words, on every process), closes the banned user's sockets all the same."""

from __future__ import annotations

from typing import Any

import websockets
from pymongo import AsyncMongoClient

from channels.close_codes import CloseCode
from server.adapters.mongo.stores import MongoRoomStore
from server.domain.times import utc_now
from tests.integration.channels.live import Live, close_code, recv


async def test_a_ban_stored_but_untold_closes_the_users_sockets_at_the_next_read(
    live: Live, mongodb_url: str, mongo_database_name: str
) -> None:
    async with websockets.connect(live.url("troll")) as troll:
        await recv(troll)  # hello
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
        try:  # stored as the moderator's ban is, with no event
            rooms = MongoRoomStore(client[mongo_database_name])
            await rooms.ban(live.room_id, "troll", by="host-1", at=utc_now())
        finally:
            await client.close()
        # Blocked words are told by no event: every process reads the settings again.
        changed = await live.host("PUT", f"/rooms/{live.room_id}/blocked-words", {"words": []})
        assert changed.status_code == 200, changed.text
        assert await close_code(troll) == CloseCode.BANNED
