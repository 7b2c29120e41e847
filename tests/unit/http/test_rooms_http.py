"""The products and rooms HTTP API on a tiny app: memory stores, real routes and error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.auth import issue_token
from server.container import Container
from server.domain.identity import Role
from server.domain.rooms import MAX_LIVE_ROOMS_PER_HOST
from server.http import products, rooms
from server.http.deps import MAX_BODY_BYTES
from server.http.errors import PROBLEM_JSON, exception_handlers
from server.services.rooms import RoomService
from server.settings import Settings
from tests.fakes import RecordingEvents

SECRET = "test-secret-for-the-rooms-http-suite"
PRODUCT = {
    "title": "Silk scarf",
    "images": ["https://img.example/scarf.jpg"],
    "price": {"amount": "12.50", "currency": "USD"},
    "stock": 5,
}


async def _explode(request: Request) -> Response:
    raise RuntimeError("secret internals: mongodb://admin:hunter2@db")


@pytest.fixture
def events() -> RecordingEvents:
    return RecordingEvents()


@pytest.fixture
async def client(events: RecordingEvents) -> AsyncIterator[httpx.AsyncClient]:
    room_store, product_store = MemoryRoomStore(), MemoryProductStore()
    app = Starlette(
        routes=[
            Mount("/api/v1", routes=products.routes() + rooms.routes()),
            Route("/explode", _explode),
        ],
        exception_handlers=exception_handlers,
    )
    app.state.container = Container(
        settings=Settings(secret=SecretStr(SECRET)),
        rooms=room_store,
        room_service=RoomService(room_store, product_store, events),
        hub=cast(Any, None),  # these routes never reach the websocket hub
        offer_service=cast(Any, None),  # nor offers and orders
        order_service=cast(Any, None),
    )
    # Unexpected errors propagate out of Starlette after the 500 is sent; the test reads the 500.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as http:
        yield http


def auth(user: str, role: Role, secret: str = SECRET, ttl: int = 3600) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(secret, user, role, ttl_seconds=ttl)}"}


HOST = auth("host-1", Role.HOST)
OTHER_HOST = auth("host-2", Role.HOST)
ADMIN = auth("admin-1", Role.ADMIN)
SHOPPER = auth("shopper-1", Role.SHOPPER)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def _room(client: httpx.AsyncClient, headers: dict[str, str] = HOST) -> str:
    response = await client.post("/rooms", json={"title": "Spring drop"}, headers=headers)
    assert response.status_code == 201, response.text
    room_id: str = response.json()["id"]
    return room_id


async def test_show_from_creation_to_end(
    client: httpx.AsyncClient, events: RecordingEvents
) -> None:
    created = await client.post("/products", json=PRODUCT, headers=HOST)
    assert created.status_code == 201
    product = created.json()
    assert product["price"] == {"amount": "12.50", "currency": "USD"}
    assert product["owner_id"] == "host-1"
    assert product["created_at"].endswith("Z")
    assert created.headers["location"] == f"http://test/api/v1/products/{product['id']}"
    assert (await client.get(f"/products/{product['id']}")).json() == product

    response = await client.post(
        "/rooms",
        json={
            "title": "Spring drop",
            "scheduled_at": "2026-06-01T20:00:00+08:00",
            "blocked_words": ["scam"],
        },
        headers=HOST,
    )
    assert response.status_code == 201
    room = response.json()
    assert room["status"] == "scheduled"
    assert room["scheduled_at"] == "2026-06-01T12:00:00.000Z"
    go_style = {"title": "From Go", "scheduled_at": "2026-06-01T20:00:00.123456789+08:00"}
    response = await client.post("/rooms", json=go_style, headers=HOST)  # RFC3339Nano
    assert response.json()["scheduled_at"] == "2026-06-01T12:00:00.123Z"
    assert room["pinned_product"] is None
    assert room["blocked_words"] == ["scam"]
    room_url = f"/rooms/{room['id']}"

    assert (await client.post(f"{room_url}/start", headers=HOST)).json()["status"] == "live"
    pinned = await client.post(
        f"{room_url}/showcase", json={"product_id": product["id"]}, headers=HOST
    )
    assert pinned.status_code == 200
    summary = {k: product[k] for k in ("id", "title", "images", "price", "stock")}
    assert pinned.json()["pinned_product"] == summary

    slow = await client.post(f"{room_url}/slow-mode", json={"seconds": 10}, headers=HOST)
    assert slow.json()["slow_mode_seconds"] == 10
    words = await client.put(f"{room_url}/blocked-words", json={"words": ["spam"]}, headers=HOST)
    assert words.json()["blocked_words"] == ["spam"]

    as_viewer = (await client.get(room_url)).json()
    assert as_viewer["pinned_product"] == summary
    assert "blocked_words" not in as_viewer  # viewers never see the filter list
    assert (await client.get(room_url, headers=HOST)).json()["blocked_words"] == ["spam"]

    live = (await client.get("/rooms", params={"status": "live"})).json()["items"]
    assert [r["id"] for r in live] == [room["id"]]
    assert live[0]["pinned_product"] == summary

    ended = (await client.post(f"{room_url}/end", headers=HOST)).json()
    assert ended["status"] == "ended"
    assert ended["ended_at"].endswith("Z")
    assert (await client.get("/rooms", params={"status": "live"})).json()["items"] == []

    assert [event["type"] for _, event in events.events] == [
        "room.started",
        "showcase.pinned",
        "room.slow_mode",
        "room.ended",
    ]
    assert events.controls == [(room["id"], {"type": "settings_changed"})]


async def test_tokens_are_checked(client: httpx.AsyncClient) -> None:
    room_id = await _room(client)
    forged = auth("host-1", Role.HOST, secret="not-the-secret-at-all-not-the-secret")
    body = assert_problem(
        await client.post("/rooms", json={"title": "x"}, headers=forged), 401, "invalid_token"
    )
    assert "token" in body["detail"]
    # A bad token is refused even where none is needed.
    response = await client.get(f"/rooms/{room_id}", headers=forged)
    assert_problem(response, 401, "invalid_token")
    assert response.headers["www-authenticate"] == "Bearer"

    expired = auth("host-1", Role.HOST, ttl=-60)
    assert_problem(
        await client.post(f"/rooms/{room_id}/start", headers=expired), 401, "token_expired"
    )
    assert_problem(
        await client.post("/rooms", json={"title": "x"}, headers={"Authorization": "Basic abc"}),
        401,
        "invalid_token",
    )
    assert_problem(await client.post("/rooms", json={"title": "x"}), 401, "missing_token")
    # Two headers, a good token first: which one counts would be anybody's guess.
    two = [("Authorization", HOST["Authorization"]), ("Authorization", "Bearer garbage")]
    response = await client.post("/rooms", json={"title": "x"}, headers=two)
    assert_problem(response, 401, "invalid_token")


async def test_only_the_host_or_an_admin_runs_a_room(client: httpx.AsyncClient) -> None:
    room_id = await _room(client)
    assert_problem(
        await client.post(f"/rooms/{room_id}/start", headers=OTHER_HOST), 403, "forbidden"
    )
    assert_problem(
        await client.post("/rooms", json={"title": "x"}, headers=SHOPPER), 403, "forbidden"
    )
    assert_problem(await client.post("/products", json=PRODUCT, headers=SHOPPER), 403, "forbidden")
    assert (await client.get(f"/rooms/{room_id}")).json()["status"] == "scheduled"

    assert (await client.post(f"/rooms/{room_id}/start", headers=ADMIN)).status_code == 200
    again = await client.post(f"/rooms/{room_id}/start", headers=HOST)  # a retry: as it is now
    assert (again.status_code, again.json()["status"]) == (200, "live")
    assert (await client.post(f"/rooms/{room_id}/end", headers=HOST)).status_code == 200
    assert_problem(
        await client.post(f"/rooms/{room_id}/start", headers=HOST), 409, "invalid_room_state"
    )
    again = await client.post(f"/rooms/{room_id}/end", headers=ADMIN)
    assert (again.status_code, again.json()["status"]) == (200, "ended")


async def test_a_host_may_have_so_many_rooms_live(client: httpx.AsyncClient) -> None:
    rooms = [await _room(client) for _ in range(MAX_LIVE_ROOMS_PER_HOST + 1)]
    for room_id in rooms[:-1]:
        assert (await client.post(f"/rooms/{room_id}/start", headers=HOST)).status_code == 200
    refused = await client.post(f"/rooms/{rooms[-1]}/start", headers=HOST)
    assert_problem(refused, 409, "too_many_live_rooms")
    assert (await client.get(f"/rooms/{rooms[-1]}")).json()["status"] == "scheduled"
    assert (await client.post(f"/rooms/{rooms[0]}/end", headers=HOST)).status_code == 200
    assert (await client.post(f"/rooms/{rooms[-1]}/start", headers=HOST)).status_code == 200


async def test_unknown_things_are_not_found(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/rooms/r_missing"), 404, "not_found")
    assert_problem(await client.get("/products/p_missing"), 404, "not_found")
    assert_problem(await client.post("/rooms/r_missing/end", headers=HOST), 404, "not_found")
    room_id = await _room(client)
    response = await client.post(
        f"/rooms/{room_id}/showcase", json={"product_id": "p_nope"}, headers=HOST
    )
    assert_problem(response, 404, "not_found")
    assert_problem(await client.get("/no-such-route"), 404, "not_found")
    # An id is named back as it came, but for what would hide or disguise the answer.
    spoofed = assert_problem(await client.get("/rooms/r_%E2%80%AEgpj%00"), 404, "not_found")
    assert spoofed["detail"] == "room r_U+202EgpjU+0000 not found"
    long = assert_problem(await client.get("/rooms/r_" + "x" * 5000), 404, "not_found")
    assert len(long["detail"]) <= 301

    wrong_method = await client.delete(f"/rooms/{room_id}")
    assert_problem(wrong_method, 405, "method_not_allowed")
    assert "GET" in wrong_method.headers["allow"]
    wrong_method = await client.patch("/rooms")
    assert_problem(wrong_method, 405, "method_not_allowed")
    assert {"GET", "POST"} <= set(wrong_method.headers["allow"].split(", "))


@pytest.mark.parametrize(
    ("change", "field", "error_type"),
    [
        ({"price": {"amount": 12.5, "currency": "USD"}}, "price.amount", "string_type"),
        (
            {"price": {"amount": "12.50", "currency": "usd"}},
            "price.currency",
            "string_pattern_mismatch",
        ),
        ({"price": {"amount": "12.50", "currency": "XYZ"}}, "price", "value_error"),
        ({"price": {"amount": "12.505", "currency": "USD"}}, "price", "value_error"),
        ({"price": {"amount": "0", "currency": "USD"}}, "price", "value_error"),
        (
            {"price": {"amount": "1e3", "currency": "USD"}},
            "price.amount",
            "string_pattern_mismatch",
        ),
        ({"color": "red"}, "color", "extra_forbidden"),
        ({"stock": -1}, "stock", "greater_than_equal"),
        ({"stock": "5"}, "stock", "int_type"),
        ({"images": ["javascript:alert(1)"]}, "images.0", "url_scheme"),
        ({"title": "   "}, "title", "string_too_short"),
        ({"origin_country": "XX"}, "origin_country", "value_error"),
        ({"origin_country": "PRT"}, "origin_country", "string_pattern_mismatch"),
        (
            {"other_prices": [{"amount": "0", "currency": "EUR"}]},
            "other_prices.0",
            "value_error",
        ),
    ],
)
async def test_bad_products_are_refused_by_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str, error_type: str
) -> None:
    # Stock, prices and countries have codes of their own, as offers and addresses say them.
    own_codes = {
        "stock": "invalid_stock",
        "price": "invalid_price",
        "other_prices": "invalid_price",
    }
    own_codes["origin_country"] = "invalid_country"
    code = own_codes.get(field.split(".")[0], "invalid_input")
    body = assert_problem(
        await client.post("/products", json={**PRODUCT, **change}, headers=HOST), 422, code
    )
    assert [(e["field"], e["type"]) for e in body["errors"]] == [(field, error_type)]


@pytest.mark.parametrize(
    "scheduled_at",
    [
        "2026-06-01T20:00:00",  # naive
        "9999-12-31T23:59:59-01:00",  # past year 9999 once in UTC
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "1700000000",  # seconds, not RFC 3339
        "2026-06-01 20:00:00Z",  # a space for the T
        "2026-06-01T20:00:00.1234567890Z",  # finer than nanoseconds
    ],
)
async def test_a_room_time_that_is_not_an_rfc_3339_utc_moment_is_refused(
    client: httpx.AsyncClient, scheduled_at: str
) -> None:
    room = {"title": "x", "scheduled_at": scheduled_at}
    body = assert_problem(
        await client.post("/rooms", json=room, headers=HOST), 422, "invalid_input"
    )
    assert body["errors"][0]["field"] == "scheduled_at"


async def test_bad_room_input_is_refused(client: httpx.AsyncClient) -> None:
    room_id = await _room(client)

    for seconds in (-1, 3601, 1.5):
        response = await client.post(
            f"/rooms/{room_id}/slow-mode", json={"seconds": seconds}, headers=HOST
        )
        body = assert_problem(response, 422, "invalid_slow_mode")  # as the service says it
        assert body["errors"][0]["field"] == "seconds"
    too_many = {"words": [f"w{i}" for i in range(201)]}
    response = await client.put(f"/rooms/{room_id}/blocked-words", json=too_many, headers=HOST)
    assert_problem(response, 422, "too_many_blocked_words")
    repeated = {"words": ["same"] * 201 + ["SAME "]}  # one word, once repeats are merged
    response = await client.put(f"/rooms/{room_id}/blocked-words", json=repeated, headers=HOST)
    assert response.json()["blocked_words"] == ["same"]
    long_word = {"words": ["fine", "x" * 51]}
    response = await client.put(f"/rooms/{room_id}/blocked-words", json=long_word, headers=HOST)
    assert_problem(response, 422, "blocked_word_too_long")
    # Stars alone block nothing, whatever joiners or width they are written with.
    for word in ("\u0000", "spam\u202e", "\u200b", "***", " * ", "*\u200d*", "\uff0a\uff0a"):
        words = {"words": ["fine", word]}
        response = await client.put(f"/rooms/{room_id}/blocked-words", json=words, headers=HOST)
        assert assert_problem(response, 422, "invalid_input")["errors"][0]["field"] == "words.1"

    for params, field in (
        ({"status": "paused"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"limit": "1_0"}, "limit"),  # what int() takes, not digits
        ({"limit": " 5"}, "limit"),
        ({"limit": "1.0"}, "limit"),
        ({"limit": "\u0665"}, "limit"),  # an Arabic-Indic five
    ):
        body = assert_problem(await client.get("/rooms", params=params), 422, "invalid_input")
        assert body["errors"][0]["field"] == field
    # Too large is told its range, however many digits: not that it is no number.
    for large in ("1000000000", "9" * 5000):
        response = await client.get("/rooms", params={"limit": large})
        body = assert_problem(response, 422, "invalid_input")
        assert body["errors"][0]["message"] == "Input should be less than or equal to 100"
    padded = await client.get("/rooms", params={"limit": "0000000002"})
    assert len(padded.json()["items"]) <= 2
    assert (await client.get(f"/rooms/{room_id}")).json()["slow_mode_seconds"] == 0
    busted = await client.get("/rooms", params={"limit": "5", "_": "1700000000"})
    assert busted.status_code == 200  # a cache buster is not the list's business
    # Given twice, which one counts would be the parser's guess (the last, in Starlette's).
    for twice, field in (
        ({"limit": ["500", "1"]}, "limit"),
        ({"status": ["bogus", "live"]}, "status"),
    ):
        body = assert_problem(await client.get("/rooms", params=twice), 422, "invalid_input")
        assert body["errors"] == [
            {"field": field, "message": "is given more than once: send it once", "type": "repeated"}
        ]
    assert (await client.get("/rooms", params={"_": ["1", "2"]})).status_code == 200


async def test_a_body_of_many_faults_gets_a_short_answer(client: httpx.AsyncClient) -> None:
    """60 KB of bad list items, from anyone signed in: every fault listed was 1.8 MB of answer
    and 150 ms of the server's time. A list is refused at 1,000 entries, before its words are
    read; other faults are counted, and the first 20 listed."""
    room_id = await _room(client)
    words = [0] * 20_000
    for method, path, sent in (
        ("PUT", f"/rooms/{room_id}/blocked-words", {"words": words}),
        ("POST", "/rooms", {"title": "t", "blocked_words": words}),
    ):
        response = await client.request(method, path, json=sent, headers=SHOPPER)
        problem = assert_problem(response, 422, "too_many_blocked_words")  # as for 201 words
        assert len(response.content) < 1_000
    repeated = {"words": ["same"] * 1_000}  # merged into one: as many as that are taken
    response = await client.put(f"/rooms/{room_id}/blocked-words", json=repeated, headers=HOST)
    assert response.json()["blocked_words"] == ["same"]

    unknown = {"title": "t", **{f"f{i}": 0 for i in range(5_000)}}
    response = await client.post("/rooms", json=unknown, headers=HOST)
    problem = assert_problem(response, 422, "invalid_input")
    assert len(response.content) < 8_000
    assert [e["field"] for e in problem["errors"]] == [f"f{i}" for i in range(20)]
    assert "(and 4999 more: the first 20 are in errors)" in problem["detail"]
    three = assert_problem(
        await client.post("/rooms", json={"title": "", "blocked_words": [0, 1]}, headers=HOST),
        422,
        "invalid_input",
    )
    assert len(three["errors"]) == 3
    assert three["detail"].endswith("(and 2 more: see errors)")


async def test_rooms_are_listed_in_pages(client: httpx.AsyncClient) -> None:
    created = [
        (await client.post("/rooms", json={"title": f"Show {n}"}, headers=HOST)).json()
        for n in range(5)
    ]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = (await client.get("/rooms", params=params)).json()
        seen += [room["id"] for room in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
        # A room created between pages shows on none of the later ones: a millisecond later
        # at least (one made in the page's last millisecond sorts by its random id).
        await asyncio.sleep(0.002)
        await client.post("/rooms", json={"title": "Late"}, headers=HOST)
    assert sorted(seen) == sorted(room["id"] for room in created)
    assert len(seen) == 5
    first = (await client.get("/rooms", params={"limit": 2})).json()["next_cursor"]
    for cursor in (first[:-2], first + "A", "not a cursor", first.swapcase()):
        response = await client.get("/rooms", params={"limit": 2, "cursor": cursor})
        assert_problem(response, 422, "invalid_cursor")


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"",
        b"\xff\xfe",
        b"{'title': 'x'}",
        # Python's json and pydantic take these; RFC 8259 does not, and no double holds 1e400.
        b'{"title": NaN}',
        b'{"title": "x", "blocked_words": [-Infinity]}',
        b'{"title": 1e400}',
    ],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/rooms", content=raw, headers={**HOST, "Content-Type": "application/json"}
    )
    assert_problem(response, 400, "malformed_json")


async def test_oversized_bodies_are_413(client: httpx.AsyncClient) -> None:
    big = {"title": "x", "blocked_words": ["y" * 40] * (MAX_BODY_BYTES // 40)}
    assert_problem(await client.post("/rooms", json=big, headers=HOST), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"title": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"z" * 1024
        yield b'"}'

    response = await client.post("/rooms", content=chunks(), headers=HOST)
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    assert (await client.get("/rooms")).json()["items"] == []


async def test_unexpected_errors_leak_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("http://test/explode")
    body = assert_problem(response, 500, "internal")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["detail"] == "an unexpected error occurred"
