"""One viewer's frames leave in the order they were pushed, whichever way each one takes:
straight to the socket (channels/direct_send.py) or through the queue and its writer task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from channels import connection
from channels.close_codes import CloseCode
from channels.connection import Connection
from server.domain.identity import Identity, Role


class Wire:
    """One socket as the client reads it: every frame in the order it left, and by which way.
    `paused` is the transport's flow control: it takes no direct writes, and ASGI sends wait."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str]] = []
        self.writable = asyncio.Event()
        self.writable.set()

    def write_now(self, text: str) -> bool:  # what send_now does on a real socket
        if not self.writable.is_set():
            return False
        self.frames.append(("direct", text))
        return True

    async def send_text(self, data: str) -> None:  # the ASGI way, as uvicorn's send waits
        await self.writable.wait()
        self.frames.append(("asgi", data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.frames.append(("close", str(code)))

    def texts(self) -> list[str]:
        return [text for _, text in self.frames]


@pytest.fixture(autouse=True)
def wire_send_now(monkeypatch: pytest.MonkeyPatch) -> None:
    def send_now(socket: Any, text: str) -> bool:
        assert isinstance(socket, Wire)
        return socket.write_now(text)

    monkeypatch.setattr(connection, "send_now", send_now)


def viewer(wire: Wire, limit: int = 4) -> Connection:
    return Connection(
        "c1",
        Identity("leo", Role.SHOPPER),
        "r1",
        wire,
        limit=limit,
        on_overflow=lambda conn: None,
        direct=wire,  # type: ignore[arg-type]  # the Wire stands in for uvicorn's protocol
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_hello_goes_first_and_nothing_overtakes_queued_frames() -> None:
    wire = Wire()
    conn = viewer(wire)
    conn.push("e1")  # before start: the viewer has not had its hello yet
    assert wire.frames == []
    conn.start(["hello"])
    conn.push("e2")  # the writer has not run yet: e2 must wait behind hello and e1
    await settle()
    assert wire.frames == [("asgi", "hello"), ("asgi", "e1"), ("asgi", "e2")]
    conn.push("e3")  # nothing waiting: straight out, before push returns
    assert wire.frames[-1] == ("direct", "e3")


async def test_a_paused_socket_queues_and_the_queue_drains_first_when_it_resumes() -> None:
    wire = Wire()
    conn = viewer(wire)
    conn.start(["hello"])
    await settle()
    wire.writable.clear()
    conn.push("e1")
    conn.push("e2")
    await settle()
    assert wire.texts() == ["hello"]
    wire.writable.set()
    conn.push("e3")  # the queue is not empty yet: e3 must not overtake e1 and e2
    await settle()
    assert wire.frames[1:] == [("asgi", "e1"), ("asgi", "e2"), ("asgi", "e3")]
    conn.push("e4")
    assert wire.frames[-1] == ("direct", "e4")


async def test_a_viewer_paused_past_its_limit_is_closed_as_too_slow() -> None:
    wire = Wire()
    conn = viewer(wire, limit=2)
    conn.start(["hello"])
    await settle()
    wire.writable.clear()
    for n in range(4):
        conn.push(f"e{n}")
        await settle()
    assert conn.closed
    assert ("close", "4008") in wire.frames


async def test_a_close_asked_for_before_hello_waits_for_it() -> None:
    # A room.ended (or a drain) fanned out while the viewer's join still waits on Redis: the
    # close must go after hello and what was queued, from the one writer the join starts.
    wire = Wire()
    wire.writable.clear()  # the socket is slow to take the first frames
    conn = viewer(wire)
    conn.push("room.ended")
    conn.close_after_flush(CloseCode.ROOM_ENDED, "the room has ended")
    await settle()
    conn.start(["hello"])
    await settle()
    wire.writable.set()
    await settle()
    assert wire.frames == [
        ("asgi", "hello"),
        ("asgi", "room.ended"),
        ("close", str(int(CloseCode.ROOM_ENDED))),
    ]
