"""The URLs `Location` headers give for what a request made (a product, a room, an offer, an
order): under LIVESHOP_PUBLIC_URL when it is set, whatever `Host` the request named; else as
the request reached the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import SecretStr

from channels.broker_memory import MemoryBroker, MemoryBus
from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.app import Backends, create_app
from server.auth import issue_token
from server.domain.identity import Role
from server.settings import Settings
from tests.unit.services.test_claims_http import CLAIM

SECRET = "test-secret-for-the-locations-suite"


def bearer(user: str, role: Role) -> dict[str, str]:
    token = issue_token(SECRET, user, role, ttl_seconds=600)
    # A Host other than the server's own: a client's mistake, or a cache being poisoned.
    return {"Authorization": f"Bearer {token}", "Host": "evil.example"}


HOST = bearer("host-1", Role.HOST)


@asynccontextmanager
async def serving(public_url: str | None) -> AsyncIterator[httpx.AsyncClient]:
    backends = Backends(MemoryProductStore(), MemoryRoomStore(), MemoryBroker(MemoryBus(100, 60)))
    settings = Settings(secret=SecretStr(SECRET), public_url=public_url)
    app = create_app(settings, backends=backends)
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
            yield client


async def locations(client: httpx.AsyncClient) -> dict[str, str]:
    """What each made thing's `Location` says, by what it is."""
    product = await client.post(
        "/products",
        json={"title": "Serum", "price": {"amount": "20.00", "currency": "USD"}, "stock": 9},
        headers=HOST,
    )
    room = await client.post("/rooms", json={"title": "show"}, headers=HOST)
    room_id = room.json()["id"]
    assert (await client.post(f"/rooms/{room_id}/start", headers=HOST)).status_code == 200
    terms = {"product_id": product.json()["id"], "quantity": 5, "per_user_limit": 1}
    price = {"amount": "9.90", "currency": "USD"}
    offer = await client.post(
        f"/rooms/{room_id}/offers", json={**terms, "price": price}, headers=HOST
    )
    buyer = {**bearer("buyer-1", Role.SHOPPER), "Idempotency-Key": "k-1"}
    order = await client.post(f"/offers/{offer.json()['id']}/claims", json=CLAIM, headers=buyer)
    made = {"products": product, "rooms": room, "offers": offer, "orders": order}
    assert {name: answer.status_code for name, answer in made.items()} == dict.fromkeys(made, 201)
    return {name: answer.headers["location"] for name, answer in made.items()}


@pytest.mark.parametrize(
    ("public_url", "base"),
    [
        ("https://shop.example/", "https://shop.example"),
        ("https://shop.example/live", "https://shop.example/live"),  # behind a path
    ],
)
async def test_locations_are_under_the_public_url_whatever_host_a_request_names(
    public_url: str, base: str
) -> None:
    async with serving(public_url) as client:
        found = await locations(client)
    for name, url in found.items():
        assert url.startswith(f"{base}/api/v1/{name}/"), (name, url)


async def test_without_a_public_url_locations_follow_the_request() -> None:
    async with serving(None) as client:
        found = await locations(client)
    for name, url in found.items():
        assert url.startswith(f"http://evil.example/api/v1/{name}/"), (name, url)
