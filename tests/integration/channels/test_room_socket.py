"""The websocket room through a real uvicorn server, real Redis and real MongoDB."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection

from channels.broker_redis import RedisBroker
from channels.close_codes import CloseCode
from channels.hub import Hub
from server.auth import issue_token
from server.domain.errors import Unavailable
from server.domain.identity import Role
from tests.integration.channels.live import Live, close_code, host_and, recv, recv_type, token


async def test_hello_describes_the_room_and_who_you_are(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as ws:
        hello = await recv(ws)
    assert hello["type"] == "hello"
    assert hello["room"]["id"] == live.room_id
    assert hello["room"]["status"] == "live"
    assert hello["you"]["user_id"] == "leo"
    assert hello["recovered"] is False
    assert isinstance(hello["seq"], int)
    assert hello["epoch"]


async def test_chat_round_trip_and_anonymous_viewers_only_watch(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as leo, websockets.connect(live.url()) as anon:
        await recv(leo)
        assert (await recv(anon))["you"]["anonymous"] is True
        await anon.send(json.dumps({"type": "chat.send", "text": "hi", "client_id": "a1"}))
        refused = await recv_type(anon, "error")
        assert (refused["code"], refused["ref"]) == ("forbidden", "a1")
        await leo.send(json.dumps({"type": "chat.send", "text": " hello\x00 ", "client_id": "c1"}))
        for ws in (leo, anon):
            message = await recv_type(ws, "chat.message")
            assert message["text"] == "hello"
            assert message["client_id"] == "c1"
            assert message["user"]["id"] == "leo"
        # The longest line, each character an emoji, as a client's JSON escapes it (6 KB).
        await leo.send(json.dumps({"type": "chat.send", "text": "\U0001f525" * 500}))
        assert (await recv_type(leo, "chat.message"))["text"] == "\U0001f525" * 500


async def test_a_frame_the_server_fails_to_carry_out_is_named_in_its_error(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis refuses the publish of a chat line or of a moderator's act (a fault injected in the
    # hub, the servers stay real): the error must name the frame, as a refusal's does.
    async def away(self: Hub, room_id: str, event: dict[str, object]) -> int:
        raise Unavailable("live events are unavailable, try again")

    monkeypatch.setattr(Hub, "publish_room_event", away)
    async with websockets.connect(live.url("host-1", Role.HOST)) as host:
        await recv(host)
        await host.send(json.dumps({"type": "chat.send", "text": "hi", "client_id": "c1"}))
        assert (await recv_type(host, "error"))["ref"] == "c1"
        await host.send(json.dumps({"type": "room.slow_mode", "seconds": 5, "ref": "s1"}))
        refused = await recv_type(host, "error")
        assert (refused["code"], refused["ref"]) == ("unavailable", "s1")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed_json"),
        (json.dumps({"type": "teleport"}), "unknown_type"),
        (json.dumps({"type": "like", "count": 1.5}), "invalid_frame"),
        (json.dumps({"type": "chat.send", "text": "x" * 9000}), "frame_too_large"),
        (json.dumps({"type": "chat.send", "text": "x" * 3000}), "message_too_long"),
    ],
)
async def test_bad_frames_get_errors_and_the_socket_stays_open(
    live: Live, frame: str, code: str
) -> None:
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)
        await ws.send(frame)
        assert (await recv_type(ws, "error"))["code"] == code
        await ws.send(json.dumps({"type": "ping", "ref": "still-there"}))
        assert (await recv_type(ws, "pong"))["ref"] == "still-there"


async def test_repeated_abuse_closes_the_socket(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)
        for _ in range(5):
            await ws.send("garbage")
        assert await close_code(ws) == 4029


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("forged", 4001),
        ("expired", 4001),
        ("two_tokens", 4001),
        ("empty_token", 4001),
        ("unknown_room", 4004),
    ],
)
async def test_refused_connections_say_why(live: Live, who: str, expected: int) -> None:
    if who == "two_tokens":  # which one counts would be the parser's guess
        url = f"{live.url('leo')}&token={token('mia')}"
    elif who == "empty_token":  # a client whose token went missing, not a viewer signed out
        url = f"{live.ws}/ws/rooms/{live.room_id}?token="
    elif who == "forged":
        url = f"{live.ws}/ws/rooms/{live.room_id}?token=" + issue_token(
            "another-secret-entirely-000000000", "leo", Role.ADMIN
        )
    elif who == "expired":
        url = f"{live.ws}/ws/rooms/{live.room_id}?token={token('leo', ttl=-10)}"
    else:
        url = f"{live.ws}/ws/rooms/r_doesnotexist?token={token('leo')}"
    async with websockets.connect(url) as ws:
        assert await close_code(ws) == expected


async def test_rate_limit_answers_with_an_error_and_keeps_the_socket(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)
        for i in range(8):
            await ws.send(json.dumps({"type": "chat.send", "text": f"m{i}", "client_id": str(i)}))
        error = await recv_type(ws, "error")
        assert error["code"] == "rate_limited"
        await ws.send(json.dumps({"type": "ping"}))
        await recv_type(ws, "pong")


async def test_moderation_mute_delete_slow_mode_and_ban(live: Live) -> None:
    async with host_and(live, "troll") as (host, troll):
        await troll.send(json.dumps({"type": "chat.send", "text": "spam"}))
        spam = await recv_type(host, "chat.message")
        await host.send(json.dumps({"type": "chat.delete", "message_id": spam["id"]}))
        assert (await recv_type(troll, "chat.deleted"))["message_id"] == spam["id"]
        await host.send(
            json.dumps({"type": "user.mute", "user_id": "troll", "duration_seconds": 60})
        )
        assert (await recv_type(troll, "user.muted"))["user_id"] == "troll"
        await troll.send(json.dumps({"type": "chat.send", "text": "again"}))
        assert (await recv_type(troll, "error"))["code"] == "muted"
        await host.send(json.dumps({"type": "room.slow_mode", "seconds": 30}))
        assert (await recv_type(troll, "room.slow_mode"))["seconds"] == 30
        await host.send(json.dumps({"type": "user.ban", "user_id": "troll"}))
        assert (await recv_type(troll, "user.banned"))["user_id"] == "troll"
        assert await close_code(troll) == 4003
    async with websockets.connect(live.url("troll")) as again:
        assert await close_code(again) == 4003
    room = (await live.host("GET", f"/rooms/{live.room_id}")).json()
    assert room["slow_mode_seconds"] == 30


async def test_a_shortened_slow_mode_holds_who_spoke_under_the_longer_one_to_the_shorter(
    live: Live,
) -> None:
    async with host_and(live, "leo") as (host, leo):
        await host.send(json.dumps({"type": "room.slow_mode", "seconds": 30}))
        await recv_type(leo, "room.slow_mode")
        await leo.send(json.dumps({"type": "chat.send", "text": "first"}))
        await recv_type(leo, "chat.message")
        await host.send(json.dumps({"type": "room.slow_mode", "seconds": 1}))
        await recv_type(leo, "room.slow_mode")
        await asyncio.sleep(1.1)
        await leo.send(json.dumps({"type": "chat.send", "text": "a second later", "ref": "l2"}))
        answer = await recv(leo)
        while answer["type"] not in ("chat.message", "error"):  # viewers, likes
            answer = await recv(leo)
        assert (answer["type"], answer.get("text")) == ("chat.message", "a second later")


async def _answer(ws: ClientConnection) -> dict[str, Any]:
    """The next chat line or error, past the room's counts."""
    frame = await recv(ws)
    while frame["type"] not in ("chat.message", "error"):
        frame = await recv(ws)
    return frame


async def test_slow_mode_holds_a_line_within_it_and_who_spoke_just_before_it_began(
    live: Live,
) -> None:
    async with host_and(live, "leo") as (host, leo):
        await leo.send(json.dumps({"type": "chat.send", "text": "before"}))
        assert (await _answer(leo))["type"] == "chat.message"
        await host.send(json.dumps({"type": "room.slow_mode", "seconds": 30}))
        await recv_type(leo, "room.slow_mode")
        await leo.send(json.dumps({"type": "chat.send", "text": "at once"}))
        assert (await _answer(leo)).get("code") == "slow_mode"


async def test_a_mute_and_a_ban_are_lifted(live: Live) -> None:
    """A mistaken ban lasted for the room's life, and a mute for its whole duration."""
    async with host_and(live, "leo") as (host, leo):
        mute = {"type": "user.mute", "user_id": "leo", "duration_seconds": 600}
        await host.send(json.dumps(mute))
        await recv_type(leo, "user.muted")
        await host.send(json.dumps({"type": "user.unmute", "user_id": "leo"}))
        assert (await recv_type(leo, "user.unmuted"))["user_id"] == "leo"
        await leo.send(json.dumps({"type": "chat.send", "text": "thanks"}))
        assert (await recv_type(host, "chat.message"))["text"] == "thanks"
        await host.send(json.dumps({"type": "user.ban", "user_id": "leo"}))
        assert await close_code(leo) == 4003
        await host.send(json.dumps({"type": "user.unban", "user_id": "leo"}))
        assert (await recv_type(host, "user.unbanned"))["user_id"] == "leo"
    async with websockets.connect(live.url("leo")) as back:
        assert (await recv(back))["type"] == "hello"
        await back.send(json.dumps({"type": "chat.send", "text": "back"}))
        assert (await recv_type(back, "chat.message"))["text"] == "back"


async def test_lifting_what_holds_nobody_is_refused_and_the_room_hears_nothing(
    live: Live,
) -> None:
    """An unban of someone never banned told every viewer they had been."""
    async with host_and(live, "leo") as (host, leo):
        for what, code in (("user.unban", "not_banned"), ("user.unmute", "not_muted")):
            await host.send(json.dumps({"type": what, "user_id": "mia", "ref": what}))
            error = await recv_type(host, "error")
            assert (error["code"], error["ref"]) == (code, what)
        await host.send(json.dumps({"type": "chat.send", "text": "marker"}))
        # The room's stream is ordered: an announcement would have come before the line.
        heard = [await recv(leo)]
        while heard[-1]["type"] != "chat.message":
            heard.append(await recv(leo))
        assert heard[-1]["text"] == "marker"
        assert not {"user.unbanned", "user.unmuted"} & {frame["type"] for frame in heard}


async def test_no_mute_or_ban_holds_the_platforms_staff(live: Live) -> None:
    """A moderator could mute and ban an admin or another moderator, for the room's life: the
    server knows a role only from its owner's token, so the mute or ban is kept, and holds
    them only if they come back without their staff token."""
    async with (
        websockets.connect(live.url("mod-1", Role.MODERATOR)) as mod,
        websockets.connect(live.url("admin-1", Role.ADMIN)) as admin,
        websockets.connect(live.url("mod-2", Role.MODERATOR)) as other_mod,
    ):
        for ws in (mod, admin, other_mod):
            await recv(ws)
        await mod.send(json.dumps({"type": "user.mute", "user_id": "mod-2"}))
        await recv_type(other_mod, "user.muted")
        await other_mod.send(json.dumps({"type": "chat.send", "text": "still here"}))
        assert (await recv_type(other_mod, "chat.message"))["text"] == "still here"
        await mod.send(json.dumps({"type": "user.ban", "user_id": "admin-1"}))
        await recv_type(admin, "user.banned")
        await admin.send(json.dumps({"type": "chat.send", "text": "and me"}))
        assert (await recv_type(admin, "chat.message"))["text"] == "and me"
    async with websockets.connect(live.url("admin-1", Role.ADMIN)) as again:
        assert (await recv(again))["type"] == "hello"
    async with websockets.connect(live.url("admin-1")) as as_a_shopper:
        assert await close_code(as_a_shopper) == 4003


async def test_blocked_words_set_over_http_apply_as_their_notice_arrives(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)
        answer = await live.host("PUT", f"/rooms/{live.room_id}/blocked-words", {"words": ["scam"]})
        assert answer.status_code == 200, answer.text
        # The settings' notice travels through Redis: a line may pass until it arrives (or be
        # held by the chat's rate limit). The loop's bound only keeps a lost notice
        # from hanging the test.
        for _ in range(100):
            await ws.send(json.dumps({"type": "chat.send", "text": "what a SCAM"}))
            frame = await recv(ws)
            while frame["type"] not in ("chat.message", "error"):
                frame = await recv(ws)
            if frame.get("code") == "blocked_word":
                break
            assert frame["type"] == "chat.message" or frame["code"] == "rate_limited", frame
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the blocked word was never refused")


async def test_pin_and_end_reach_viewers(live: Live) -> None:
    product = await live.host(
        "POST",
        "/products",
        {"title": "Serum", "price": {"amount": "9.90", "currency": "EUR"}, "stock": 3},
    )
    assert product.status_code == 201, product.text
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)
        pinned = await live.host(
            "POST", f"/rooms/{live.room_id}/showcase", {"product_id": product.json()["id"]}
        )
        assert pinned.status_code == 200, pinned.text
        event = await recv_type(ws, "showcase.pinned")
        assert event["product"]["price"] == {"amount": "9.90", "currency": "EUR"}
        assert (await live.host("POST", f"/rooms/{live.room_id}/end")).status_code == 200
        await recv_type(ws, "room.ended")
        assert await close_code(ws) == 4010
    async with websockets.connect(live.url("leo")) as late:
        assert await close_code(late) == 4010


async def test_likes_and_viewers_are_counted(live: Live) -> None:
    async with websockets.connect(live.url("a")) as a, websockets.connect(live.url("b")) as b:
        await recv(a)
        await recv(b)
        for _ in range(10):
            await a.send(json.dumps({"type": "like", "count": 2}))
        await b.send(json.dumps({"type": "like"}))

        async def until_likes(total: int) -> None:
            while (await recv_type(b, "likes"))["count"] != total:
                pass

        await asyncio.wait_for(until_likes(21), 3)
        stats = (await live.host("GET", f"/rooms/{live.room_id}/stats")).json()
        assert stats["likes"] == 21
        assert stats["viewers"] == 2


async def test_a_path_with_a_slash_too_many_is_not_found_not_redirected(live: Live) -> None:
    for path in (f"/api/v1/rooms/{live.room_id}/", "/api/v1/rooms/", "/healthz/"):
        response = await live.http.get(path, headers={"host": "elsewhere.example"})
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert "location" not in response.headers


async def test_the_api_document_says_which_calls_need_a_token(live: Live) -> None:
    """And a token that is sent must be good, on reads open to anyone too: a client whose
    token has expired hears so rather than a stranger's answer."""
    document = (await live.http.get("/api/v1/openapi.json")).json()
    forged = {"Authorization": "Bearer not-a-token"}
    for path, operations in document["paths"].items():
        url = "/api/v1" + path.replace("{room_id}", live.room_id)
        url = re.sub(r"\{[a-z_]+\}", "x_unknown", url)
        for method, operation in operations.items():
            anonymous = await live.http.request(method, url, json={})
            open_to_anyone = {} in operation["security"]
            assert (anonymous.status_code != 401) == open_to_anyone, (method, path)
            refused = await live.http.request(method, url, json={}, headers=forged)
            assert (refused.status_code, refused.json()["code"]) == (401, "invalid_token"), (
                method,
                path,
            )


async def test_health_readiness_and_metrics(live: Live) -> None:
    assert (await live.http.get("/healthz")).json() == {"status": "ok"}
    ready = await live.http.get("/readyz")
    assert ready.status_code == 200
    # The stock is in Redis here: its checks (rights, no eviction) passed at start-up.
    assert ready.json()["checks"] == {"mongodb": "ok", "broker": "ok", "stock": "ok"}
    before = await frames_in(live)
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "ping", "ref": "p1"}))
        await recv_type(ws, "pong")
        await ws.send("{not json")
        await recv_type(ws, "error")
        metrics = (await live.http.get("/metrics")).text
    after = await frames_in(live)
    assert {outcome: after[outcome] - before[outcome] for outcome in after} == {
        "accepted": 1,
        "rejected": 1,
    }
    for name in (
        "liveshop_ws_connections 1.0",
        "liveshop_rooms_active",
        "liveshop_ws_frames_out_total",
        "liveshop_broker_publish_seconds_bucket",
        "liveshop_ws_slow_consumer_disconnects_total",
    ):
        assert name in metrics
    openapi = (await live.http.get("/api/v1/openapi.json")).json()
    assert "/rooms/{room_id}/showcase" in openapi["paths"]


async def frames_in(live: Live) -> dict[str, float]:
    """The server's count of client frames, by outcome."""
    metrics = (await live.http.get("/metrics")).text
    counts = {"accepted": 0.0, "rejected": 0.0}
    for line in metrics.splitlines():
        for outcome in counts:
            if line.startswith(f'liveshop_ws_frames_in_total{{outcome="{outcome}"}} '):
                counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_a_viewer_sent_away_while_joining_is_closed_once(
    live: Live, clean_redis: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The room's history is lost while a signed-in viewer joins: the reset sends the room's
    # viewers away, this one included, and its join then fails too. Its socket was closed
    # once already; closing it again raised out of the app.
    async def lost_while_joining(broker: RedisBroker, user_id: str) -> None:
        redis = aioredis.from_url(clean_redis)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()
        hub = broker._listener
        assert isinstance(hub, Hub)

        async def sent_away() -> None:  # the tick found the history lost, and read the room
            while True:
                room = hub.room(live.room_id)
                if hub.metrics.stream_resets._value.get():
                    assert room is not None
                    if not room.reloading:
                        return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(sent_away(), 10)
        raise Unavailable("pub/sub went away")

    monkeypatch.setattr(RedisBroker, "subscribe_user", lost_while_joining)
    async with websockets.connect(live.url("leo")) as leo:
        assert await close_code(leo) == CloseCode.RESYNC
    await live.http.get("/healthz")  # the server has gone past the join's end
    await asyncio.sleep(0.5)
    assert "Exception in ASGI application" not in caplog.text


async def test_a_viewer_joining_while_a_backend_is_away_is_told_to_try_again(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis refuses the viewer's private channel (a fault injected in the broker, the servers
    # stay real): not the server's own fault (1011) but "try again later" (1013).
    async def away(self: RedisBroker, user_id: str) -> None:
        raise Unavailable("live events are unavailable, try again")

    monkeypatch.setattr(RedisBroker, "subscribe_user", away)
    async with websockets.connect(live.url("leo")) as leo:
        assert await close_code(leo) == CloseCode.TRY_AGAIN_LATER
    async with websockets.connect(live.url()) as anonymous:  # nothing private to subscribe
        assert (await recv(anonymous))["type"] == "hello"
