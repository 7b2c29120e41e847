"""Sockets on their way out, and sockets catching up: a banned viewer whose socket reads
slowly is not served while its close waits, a close waits on a peer that reads nothing only so
long, and a reconnect catching up on a long absence is not taken for a slow client."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket

from channels import connection, endpoint
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.close_codes import CloseCode
from server.container import Container
from server.domain.identity import Identity, Role
from tests.unit.channels.hub_fakes import Socket, make_hub, viewer


class Inbox:
    """The frames a client sends, as the endpoint receives them."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        return await self.frames.get()

    def send(self, frame: dict[str, Any]) -> None:
        self.frames.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})


async def test_a_banned_viewer_whose_socket_reads_slowly_is_not_served_while_it_closes() -> None:
    """The ban closes the socket once what is queued has gone, and a socket that reads slowly
    took its time: meanwhile its frames were carried out, and the room heard a banned user."""
    hub = make_hub(MemoryBroker(MemoryBus()))
    await hub.start()
    try:
        watcher = Socket()
        await hub.join("r1", viewer(1), watcher)
        troll = Socket()
        conn, room = await hub.join("r1", Identity("troll", Role.SHOPPER), troll)
        await troll.until_got("hello")
        troll.stalled.clear()  # its transport paused: the peer reads slowly
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "busy room"})
        settings = SimpleNamespace(max_frame_bytes=8192, max_bad_frames=10)
        container = cast(Container, SimpleNamespace(settings=settings))
        inbox = Inbox()
        socket = cast(WebSocket, inbox)
        serving = asyncio.create_task(endpoint._serve(socket, container, hub, conn, room))
        await hub.publish_room_event("r1", {"type": "user.banned", "user_id": "troll"})
        await watcher.until_got("user.banned")
        inbox.send({"type": "chat.send", "text": "banned, still here"})
        await asyncio.sleep(0.1)
        said = [f["text"] for f in watcher.of_type("chat.message")]
        assert said == ["busy room"]
        serving.cancel()
    finally:
        await hub.close()


async def test_a_close_waits_on_a_peer_that_reads_nothing_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its flush, then its close, waited for as long as the network kept the connection, and
    the socket was counted in the room all that while."""
    monkeypatch.setattr(connection, "CLOSE_TIMEOUT_SECONDS", 0.1)
    hub = make_hub(MemoryBroker(MemoryBus()))
    await hub.start()
    try:
        stalled, watcher = Socket(), Socket()
        conn, _ = await hub.join("r1", viewer(1), stalled)
        await hub.join("r1", viewer(2), watcher)
        await stalled.until_got("hello")
        stalled.stalled.clear()
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "then silence"})
        await watcher.until_got("chat.message")  # queued for the stalled one too, unread
        conn.close_after_flush(CloseCode.BANNED, "banned from this room")
        await asyncio.sleep(0.3)
        assert conn.closed
        assert stalled.closed == (CloseCode.BANNED, "banned from this room")
    finally:
        await hub.close()


async def test_a_reconnect_catching_up_on_a_long_absence_is_not_too_slow() -> None:
    """400 missed events queued at once, a socket that pauses once on its way through them,
    and one more room event: closed 4008, too slow, and sent to reconnect again and again."""
    hub = make_hub(MemoryBroker(MemoryBus()))
    await hub.start()
    try:
        first = Socket()
        await hub.join("r1", viewer(1), first)
        await first.until_got("hello")
        hello = first.frames()[0]
        for i in range(400):  # while the phone was away (history keeps 1,000)
            await hub.publish_room_event("r1", {"type": "chat.message", "text": f"m{i}"})
        await first.until_got("chat.message", 400)  # the room here is past them: missed

        class PausesOnce(Socket):
            async def send_text(self, data: str) -> None:
                if len(self.sent) == 100:
                    await asyncio.sleep(0.05)  # its network's flow control, once
                await super().send_text(data)

        phone = PausesOnce()
        await hub.join("r1", viewer(2), phone, since=hello["seq"], epoch=hello["epoch"])
        await asyncio.sleep(0.01)
        await hub.publish_room_event("r1", {"type": "chat.message", "text": "one more"})
        await phone.until_got("chat.message", 401)
        assert phone.closed is None
    finally:
        await hub.close()
