"""Claims over HTTP, in process on the memory adapters.

The claim endpoint answers its own refusals (most claims in a flash sale are refused) and reads
the body from the ASGI messages itself; these tests pin that the answers are the ones the
exception handler and Starlette's JSONResponse give, code for code and byte for byte."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message

from channels.broker_memory import MemoryBroker, MemoryBus
from schemas.commerce import AddressIn, address_to_wire
from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.app import Backends, create_app
from server.auth import issue_token
from server.domain.errors import (
    Conflict,
    InvalidInput,
    LiveshopError,
    NotFound,
    Unauthorized,
    Unavailable,
)
from server.domain.identity import Role
from server.domain.orders import Address
from server.http.deps import MAX_BODY_BYTES, read_body
from server.http.errors import (
    PROBLEM_JSON,
    ClientGone,
    InvalidRequest,
    MalformedJson,
    PayloadTooLarge,
    problem_for,
)
from server.settings import Settings

SECRET = "test-secret-for-the-claims-http-suite"  # test-only key
ADDRESS: dict[str, Any] = {
    "name": "Ana",
    "line1": "Rua 1",
    "city": "Lisboa",
    "postal_code": "1000-001",
    "country": "PT",
}
CLAIM = {"quantity": 1, "shipping_address": ADDRESS}


def bearer(user: str, role: Role = Role.SHOPPER) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user, role, ttl_seconds=600)}"}


HOST = bearer("host-1", Role.HOST)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    backends = Backends(MemoryProductStore(), MemoryRoomStore(), MemoryBroker(MemoryBus(100, 60)))
    app = create_app(Settings(secret=SecretStr(SECRET)), backends=backends)
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
            yield client


async def launch(client: httpx.AsyncClient, quantity: int) -> str:
    product = await client.post(
        "/products",
        json={"title": "Serum", "price": {"amount": "20.00", "currency": "USD"}, "stock": 100},
        headers=HOST,
    )
    assert product.status_code == 201, product.text
    room = await client.post("/rooms", json={"title": "show"}, headers=HOST)
    room_id = room.json()["id"]
    assert (await client.post(f"/rooms/{room_id}/start", headers=HOST)).status_code == 200
    offer = await client.post(
        f"/rooms/{room_id}/offers",
        json={
            "product_id": product.json()["id"],
            "price": {"amount": "9.90", "currency": "USD"},
            "quantity": quantity,
            "per_user_limit": 1,
        },
        headers=HOST,
    )
    assert offer.status_code == 201, offer.text
    return str(offer.json()["id"])


async def claim(
    client: httpx.AsyncClient,
    offer_id: str,
    user: str | None = "buyer-1",
    key: str | None = "k-1",
    **request: Any,
) -> httpx.Response:
    headers = {} if user is None else bearer(user)
    if key is not None:
        headers["Idempotency-Key"] = key
    if "content" not in request:
        request.setdefault("json", CLAIM)
    return await client.post(f"/offers/{offer_id}/claims", headers=headers, **request)


def starlette_problem(exc: LiveshopError, **extra: Any) -> JSONResponse:
    """The answer as the handler built it before: Starlette's JSONResponse, its own rendering."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, Unavailable):
        headers = {"Retry-After": "1"}
    status = exc.status
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": exc.message,
        "code": exc.code,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def assert_same_answer(response: httpx.Response, expected: JSONResponse) -> None:
    assert response.status_code == expected.status_code
    assert response.content == expected.body
    sent = [(k.encode(), v.encode()) for k, v in response.headers.multi_items()]
    assert sent == [(k.decode().lower().encode(), v) for k, v in expected.raw_headers]


@pytest.mark.parametrize(
    ("exc", "extra"),
    [
        (Conflict("the offer is sold out", code="sold_out"), {}),
        (Unauthorized("token has expired", code="token_expired"), {}),
        (NotFound("offer «ünïcode» 🎁 not found"), {}),
        (Unavailable("claims are paused for a moment, try again", code="offer_paused"), {}),
        (MalformedJson("the body is not valid JSON"), {}),
        (PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes"), {}),
        (
            InvalidRequest([{"field": "quantity", "message": "too big", "type": "less_than"}]),
            {"errors": [{"field": "quantity", "message": "too big", "type": "less_than"}]},
        ),
    ],
)
def test_problems_render_as_starlette_renders_json(
    exc: LiveshopError, extra: dict[str, Any]
) -> None:
    ours, theirs = problem_for(exc), starlette_problem(exc, **extra)
    assert ours.status_code == theirs.status_code
    assert ours.body == theirs.body
    assert ours.raw_headers == theirs.raw_headers
    assert ours.media_type == PROBLEM_JSON


async def test_a_sold_out_claim_is_answered_as_the_handler_answers(
    client: httpx.AsyncClient,
) -> None:
    offer_id = await launch(client, quantity=1)
    assert (await claim(client, offer_id, "buyer-1")).status_code == 201
    refused = await claim(client, offer_id, "buyer-2")
    assert_same_answer(
        refused, starlette_problem(Conflict("the offer is sold out", code="sold_out"))
    )
    again = await claim(client, offer_id, "buyer-2", key="k-2")
    assert (again.status_code, again.json()["code"]) == (409, "sold_out")


async def test_every_refusal_keeps_its_code(client: httpx.AsyncClient) -> None:
    offer_id = await launch(client, quantity=5)
    missing = await claim(client, offer_id, user=None)
    assert_same_answer(
        missing,
        starlette_problem(Unauthorized("this request needs an access token", code="missing_token")),
    )
    assert missing.headers["www-authenticate"] == "Bearer"
    cases: list[tuple[httpx.Response, int, str]] = [
        (await claim(client, offer_id, key=None), 422, "invalid_idempotency_key"),
        (await claim(client, offer_id, key="has space"), 422, "invalid_idempotency_key"),
        (await claim(client, offer_id, content=b"{"), 400, "malformed_json"),
        (await claim(client, "of_nope"), 404, "not_found"),
        (await claim(client, offer_id, "host-1"), 403, "own_offer"),
        (
            await claim(client, offer_id, json={"shipping_address": {**ADDRESS, "name": "A\x00"}}),
            422,
            "invalid_address",
        ),
    ]
    two_keys = await client.post(
        f"/offers/{offer_id}/claims",
        headers=[*bearer("buyer-1").items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        json=CLAIM,
    )
    cases.append((two_keys, 422, "invalid_idempotency_key"))  # which would a retry send?
    for response, status, code in cases:
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
        assert response.headers["content-type"] == PROBLEM_JSON
    # One fault, one code, whether the schema or the service finds it; `errors` names the field.
    for body, code, field in [
        ({"quantity": 0, "shipping_address": ADDRESS}, "invalid_quantity", "quantity"),
        ({"shipping_address": {**ADDRESS, "country": "P"}}, "invalid_country", "country"),
        ({"shipping_address": {**ADDRESS, "postal_code": "1" * 21}}, "invalid_postal_code", ""),
        ({"shipping_address": {**ADDRESS, "phone": "+1" * 17}}, "invalid_phone", "phone"),
        ({"shipping_address": {**ADDRESS, "city": ""}}, "invalid_address", "city"),
        # As long as the API document allows, and no longer.
        ({"shipping_address": {**ADDRESS, "name": "n" * 101}}, "invalid_address", "name"),
        ({"quantity": 0, "shipping_address": {**ADDRESS, "phone": 5}}, "invalid_input", ""),
    ]:
        invalid = await claim(client, offer_id, json=body)
        assert (invalid.status_code, invalid.json()["code"]) == (422, code), invalid.text
        assert all(field in e["field"] for e in invalid.json()["errors"])
    # A postal code its country's post would not read (the rule's, not the schema's).
    not_portuguese = {"shipping_address": {**ADDRESS, "postal_code": "99"}}
    invalid = await claim(client, offer_id, json=not_portuguese)
    assert (invalid.status_code, invalid.json()["code"]) == (422, "invalid_postal_code")
    assert "for example" in invalid.json()["detail"]
    assert (await claim(client, offer_id, "buyer-1")).status_code == 201  # nothing was taken


async def test_a_launch_refused_by_its_schema_or_its_rules_hears_the_same_code(
    client: httpx.AsyncClient,
) -> None:
    offer_id = await launch(client, quantity=5)
    room_id = (await client.get(f"/offers/{offer_id}")).json()["room_id"]
    product_id = (await client.get(f"/offers/{offer_id}")).json()["product_id"]
    terms = {"product_id": product_id, "price": {"amount": "9.90", "currency": "USD"}}
    changes: list[tuple[dict[str, object], str]] = [
        ({"quantity": 0}, "invalid_quantity"),  # the schema's bound
        ({"quantity": 5, "per_user_limit": 6}, "invalid_per_user_limit"),  # the rule's
        ({"quantity": 5, "per_user_limit": 0}, "invalid_per_user_limit"),
        ({"quantity": 5, "countdown_seconds": 3601}, "invalid_countdown"),
        ({"quantity": 5, "duration_seconds": 5}, "invalid_duration"),
        ({"quantity": 5, "price": {"amount": "0.00", "currency": "USD"}}, "invalid_price"),
        ({"quantity": 5, "price": {"amount": "-1.00", "currency": "USD"}}, "invalid_price"),
    ]
    for change, code in changes:
        response = await client.post(
            f"/rooms/{room_id}/offers", json={**terms, **change}, headers=HOST
        )
        assert (response.status_code, response.json()["code"]) == (422, code), response.text


async def test_bodies_over_the_limit_are_413_declared_or_streamed(
    client: httpx.AsyncClient,
) -> None:
    offer_id = await launch(client, quantity=5)
    padded = json.dumps({**CLAIM, "pad": "x" * MAX_BODY_BYTES}).encode()
    declared = await claim(client, offer_id, content=padded)
    assert (declared.status_code, declared.json()["code"]) == (413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"pad": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"z" * 1024
        yield b'"}'

    streamed = await claim(client, offer_id, content=chunks())
    assert "content-length" not in streamed.request.headers
    assert (streamed.status_code, streamed.json()["code"]) == (413, "payload_too_large")


async def test_a_body_in_several_messages_is_read_whole(client: httpx.AsyncClient) -> None:
    offer_id = await launch(client, quantity=5)
    body = json.dumps(CLAIM).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]
            yield b""  # an empty message in between changes nothing

    response = await claim(client, offer_id, content=chunks())
    assert response.status_code == 201, response.text


async def test_a_body_of_exactly_the_limit_is_read() -> None:
    body = b"x" * MAX_BODY_BYTES
    assert await read_body(request_of([body[:10], body[10:]])) == body
    with pytest.raises(PayloadTooLarge):
        await read_body(request_of([body, b"y"]))


async def test_a_client_gone_mid_body_is_a_disconnect() -> None:
    with pytest.raises(ClientGone):
        await read_body(request_of([b'{"quantity"'], then_disconnect=True))


async def test_a_client_gone_mid_claim_changes_nothing_and_is_not_logged_as_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backends = Backends(MemoryProductStore(), MemoryRoomStore(), MemoryBroker(MemoryBus(100, 60)))
    app = create_app(Settings(secret=SecretStr(SECRET)), backends=backends)
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
            offer_id = await launch(client, quantity=5)
            path = f"/api/v1/offers/{offer_id}/claims"
            headers = {**bearer("buyer-1"), "Idempotency-Key": "k-1", "Content-Length": "1000"}
            messages: list[Message] = [
                {"type": "http.request", "body": b'{"quantity"', "more_body": True},
                {"type": "http.disconnect"},
            ]
            sent: list[Message] = []

            async def receive() -> Message:
                return messages.pop(0)

            async def send(message: Message) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                "client": ("127.0.0.1", 50000),
                "server": ("t", 80),
            }
            await app(scope, receive, send)  # raises nothing out of the app
            assert sent[0]["status"] == 400
            offer = (await client.get(f"/offers/{offer_id}")).json()
            assert offer["remaining"] == 5
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def request_of(chunks: list[bytes], *, then_disconnect: bool = False) -> Request:
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    if then_disconnect:
        messages.append({"type": "http.disconnect"})
    else:
        messages[-1]["more_body"] = False

    async def receive() -> Message:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


async def test_a_successful_claim_answers_the_order(client: httpx.AsyncClient) -> None:
    offer_id = await launch(client, quantity=5)
    typed = {**ADDRESS, "name": "  Jose\u0301  Lima ", "phone": "+351 21 000 0000", "line2": " "}
    response = await claim(client, offer_id, json={"quantity": 1, "shipping_address": typed})
    assert response.status_code == 201, response.text
    order = response.json()
    assert response.headers["location"] == f"http://t/api/v1/orders/{order['id']}"
    assert response.headers["idempotent-replayed"] == "false"
    assert list(order["shipping_address"].items()) == [
        ("name", "Jos\u00e9 Lima"),
        ("line1", "Rua 1"),
        ("city", "Lisboa"),
        ("postal_code", "1000-001"),
        ("country", "PT"),
        ("line2", None),
        ("phone", "+351210000000"),
    ]


@pytest.mark.parametrize(
    "typed",
    [
        ADDRESS,
        {
            **ADDRESS,
            "line2": "  Apt 3 ",
            "phone": "+44 (20) 7946-0958",
            "city": "London",
            "postal_code": " sw1a 1aa ",
            "country": "gb",
        },
        {
            **ADDRESS,
            "line2": "",
            "phone": "",
            "postal_code": "10117",
            "country": "de",
            "name": "\u738b\u3000\u5c0f\u660e",
        },
    ],
)
def test_the_wire_address_is_cleaned_and_answered_as_before(typed: dict[str, Any]) -> None:
    wire = AddressIn.model_validate(typed)
    address = wire.to_address()
    assert address == Address.clean(**wire.model_dump())
    assert list(address_to_wire(address).items()) == list(asdict(address).items())


def test_an_invalid_wire_address_is_refused_as_before() -> None:
    wire = AddressIn.model_validate({**ADDRESS, "country": "ZZ"})
    with pytest.raises(InvalidInput) as raised:
        wire.to_address()
    assert raised.value.code == "invalid_country"


async def test_a_rooms_offers_are_listed_newest_first_to_anyone(client: httpx.AsyncClient) -> None:
    first_id = await launch(client, quantity=2)
    room_id = (await client.get(f"/offers/{first_id}")).json()["room_id"]
    product_id = (await client.get(f"/offers/{first_id}")).json()["product_id"]
    assert (await client.post(f"/offers/{first_id}/stop", headers=HOST)).status_code == 200
    terms = {"product_id": product_id, "price": {"amount": "8.00", "currency": "USD"}}
    second = await client.post(
        f"/rooms/{room_id}/offers", json={**terms, "quantity": 3}, headers=HOST
    )
    assert second.status_code == 201, second.text
    assert (await claim(client, second.json()["id"])).status_code == 201

    listed = await client.get(f"/rooms/{room_id}/offers")  # no token: a room's page is open
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [(o["id"], o["remaining"], o["end_reason"]) for o in items] == [
        (second.json()["id"], 2, None),
        (first_id, 2, "stopped"),
    ]
    unknown = await client.get("/rooms/r_nope/offers")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"


async def test_a_claim_during_the_countdown_hears_when_the_offer_starts(
    client: httpx.AsyncClient,
) -> None:
    first_id = await launch(client, quantity=2)
    offer = (await client.get(f"/offers/{first_id}")).json()
    terms = {"product_id": offer["product_id"], "price": {"amount": "8.00", "currency": "USD"}}
    later = await client.post(
        f"/rooms/{offer['room_id']}/offers",
        json={**terms, "quantity": 3, "countdown_seconds": 60},
        headers=HOST,
    )
    assert later.status_code == 201, later.text
    refused = await claim(client, later.json()["id"])
    assert refused.status_code == 409
    assert refused.json()["code"] == "offer_not_active"
    assert refused.json()["starts_at"] == later.json()["starts_at"]  # not yet, rather than over


async def test_a_refused_fields_detail_names_the_first_fault(client: httpx.AsyncClient) -> None:
    offer_id = await launch(client, quantity=2)
    address = {**ADDRESS, "name": ""}
    one = await claim(client, offer_id, json={"quantity": 1, "shipping_address": address})
    assert one.status_code == 422
    assert one.json()["detail"].startswith("shipping_address.name: ")
    two = await claim(client, offer_id, json={"quantity": 0, "shipping_address": address})
    assert two.json()["detail"].endswith("(and 1 more: see errors)")
    assert len(two.json()["errors"]) == 2
