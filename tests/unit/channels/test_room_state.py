"""What a process keeps of a room it serves: its viewers, and each chatting user's chat state."""

from __future__ import annotations

import time

import pytest

from channels.connection import Connection
from channels.protocol import LIKES_BURST
from channels.room_state import CHAT_STATE_KEPT_SECONDS, LocalRoom
from server.domain.identity import Identity, Role


class Socket:
    async def send_text(self, data: str) -> None:
        pass

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


def connect(room: LocalRoom, user_id: str, conn_id: str) -> Connection:
    conn = Connection(
        conn_id,
        Identity(user_id, Role.SHOPPER),
        room.room_id,
        Socket(),
        limit=10,
        on_overflow=lambda _: None,
    )
    room.add(conn)
    return conn


def test_a_users_chat_state_stays_while_they_have_a_connection_here() -> None:
    room = LocalRoom("r1")
    phone, laptop = connect(room, "ana", "c1"), connect(room, "ana", "c2")
    state = room.chat_state("ana")
    assert room.remove(phone)
    assert room.chat_state("ana") is state  # a second tab cannot reset the limits by closing one
    assert room.remove(laptop)
    assert room.chat_state("ana") is state  # nor reconnecting: kept a while after the last


def test_a_users_chat_state_outlives_their_last_connection_until_it_would_refill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # as room_state reads it
    room = LocalRoom("r1")
    ana = connect(room, "ana", "c1")
    kept = room.chat_state("ana")
    assert kept.likes.take(now[0], LIKES_BURST)  # every like at once
    room.remove(ana)
    connect(room, "ana", "c2")  # and again, with a new connection
    assert not room.chat_state("ana").likes.take(now[0], 1)
    room.remove(next(iter(room.connections)))
    now[0] += CHAT_STATE_KEPT_SECONDS + 1
    bo = connect(room, "bo", "c3")
    room.chat_state("bo")
    room.remove(bo)  # another user's leave lets the oldest kept go
    connect(room, "ana", "c4")
    assert room.chat_state("ana") is not kept
    assert room.chat_state("ana").likes.take(now[0], LIKES_BURST)


def test_removing_a_connection_twice_changes_nothing_the_second_time() -> None:
    room = LocalRoom("r1")
    first, second = connect(room, "ana", "c1"), connect(room, "ana", "c2")
    state = room.chat_state("ana")
    assert room.remove(first)
    assert not room.remove(first)  # not counted as ana's last connection leaving
    assert room.chat_state("ana") is state
    assert room.connections == {second}


def test_one_users_leaving_keeps_the_others_chat_state() -> None:
    room = LocalRoom("r1")
    ana, bo = connect(room, "ana", "c1"), connect(room, "bo", "c2")
    bos = room.chat_state("bo")
    room.chat_state("ana")
    assert room.remove(ana)
    assert room.chat_state("bo") is bos
    assert room.connections == {bo}


def test_a_stock_figure_older_than_the_one_loaded_does_not_replace_it() -> None:
    # The stream keeps figures in order, but this process may have read a newer one when it
    # loaded the room: what it shows new viewers must not go back.
    room = LocalRoom("r1")
    room.offers["f1"] = {"id": "f1", "remaining": 3, "stock_version": 12}

    def told(remaining: int, version: int | None) -> dict[str, object]:
        room.apply(
            {"type": "offer.stock", "offer_id": "f1", "remaining": remaining,
             "stock_version": version}
        )  # fmt: skip
        return {k: room.offers["f1"][k] for k in ("remaining", "stock_version")}

    assert told(4, 11) == {"remaining": 3, "stock_version": 12}
    assert told(3, 12) == {"remaining": 3, "stock_version": 12}
    assert told(2, 13) == {"remaining": 2, "stock_version": 13}
    assert told(0, None) == {"remaining": 0, "stock_version": None}  # sold out, its stock lost


def test_an_offer_started_again_keeps_the_newer_stock_figure() -> None:
    room = LocalRoom("r1")
    room.offers["f1"] = {"id": "f1", "price": "old", "remaining": 3, "stock_version": 12}

    def started(remaining: int | None, version: int | None) -> dict[str, object]:
        offer = {"id": "f1", "price": "new", "remaining": remaining, "stock_version": version}
        room.apply({"type": "offer.started", "offer": offer})
        return {k: room.offers["f1"][k] for k in ("price", "remaining", "stock_version")}

    # Sent again by a launch that read the stock earlier: the offer as told, the newer stock.
    assert started(5, 10) == {"price": "new", "remaining": 3, "stock_version": 12}
    assert started(None, None) == {"price": "new", "remaining": 3, "stock_version": 12}
    assert started(2, 14) == {"price": "new", "remaining": 2, "stock_version": 14}


def test_a_users_sockets_count_as_one_viewer() -> None:
    room = LocalRoom("r1")
    phone, laptop = connect(room, "ana", "c1"), connect(room, "ana", "c2")
    connect(room, "bo", "c3")
    assert (len(room.connections), room.viewer_count) == (3, 2)
    room.remove(phone)
    assert room.viewer_count == 2
    room.remove(laptop)
    assert room.viewer_count == 1
