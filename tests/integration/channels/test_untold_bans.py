"""Moderation stored whose event never went out (Redis away when the moderator sent it). A ban:
the next read of the room's settings, which the pub/sub's return makes (and a change of blocked
words, on every process), closes the banned user's sockets all the same. A lift: sent again, it
is told, while the room's own copy still holds the user."""

from __future__ import annotations

import json
from typing import Any

import websockets
from pymongo import AsyncMongoClient

from channels.close_codes import CloseCode
from server.adapters.mongo.stores import MongoRoomStore
from server.domain.times import utc_now
from tests.integration.channels.live import Live, close_code, host_and, recv, recv_type


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


async def test_an_unmute_stored_but_never_told_is_told_when_sent_again(
    live: Live, mongodb_url: str, mongo_database_name: str
) -> None:
    """Its `user.unmuted` lost (Redis away as it was published: the moderator heard
    `unavailable`), every process still held the mute, and the moderator's retry heard
    `not_muted`: the user stayed muted for the mute's whole length."""
    async with host_and(live, "leo") as (host, leo):
        mute = {"type": "user.mute", "user_id": "leo", "duration_seconds": 600}
        await host.send(json.dumps(mute))
        await recv_type(leo, "user.muted")
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
        try:  # stored as the first unmute stored it, and never told
            await client[mongo_database_name]["rooms"].update_one(
                {"_id": live.room_id}, {"$pull": {"mutes": {"user_id": "leo"}}}
            )
        finally:
            await client.close()
        await host.send(json.dumps({"type": "user.unmute", "user_id": "leo", "ref": "again"}))
        await recv_type(leo, "user.unmuted")
        await leo.send(json.dumps({"type": "chat.send", "text": "can I speak?"}))
        said = await recv(leo)
        while said["type"] not in ("chat.message", "error"):
            said = await recv(leo)
        assert said["type"] == "chat.message", said


async def test_an_unban_stored_but_never_told_is_told_when_sent_again(
    live: Live, mongodb_url: str, mongo_database_name: str
) -> None:
    """Its `user.unbanned` lost, every process still refused the user's joins for a minute
    (the ban heard lately), and the moderator's retry heard `not_banned`."""
    async with host_and(live, "leo") as (host, leo):
        await host.send(json.dumps({"type": "user.ban", "user_id": "leo"}))
        assert await close_code(leo) == CloseCode.BANNED
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
        try:  # stored as the first unban stored it, and never told
            await MongoRoomStore(client[mongo_database_name]).unban(live.room_id, "leo")
        finally:
            await client.close()
        await host.send(json.dumps({"type": "user.unban", "user_id": "leo", "ref": "again"}))
        await recv_type(host, "user.unbanned")
    async with websockets.connect(live.url("leo")) as back:
        assert (await recv(back))["type"] == "hello"
