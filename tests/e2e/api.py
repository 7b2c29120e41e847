"""Tokens and the HTTP calls the end-to-end tests make, from the outside like any client."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt

# Shared by every server process of the e2e suite (prod requires at least 32 characters).
SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"


def make_token(
    user_id: str,
    role: str = "shopper",
    *,
    name: str | None = None,
    ttl: float = 600,
    secret: str = SECRET,
) -> str:
    """A token as the public contract describes it: JWT HS256, sub, role, exp, name."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": user_id, "role": role, "iat": now}
    claims["exp"] = now + timedelta(seconds=ttl)
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def http(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=f"{base_url}/api/v1", headers=headers, timeout=10.0, trust_env=False
    )


def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url} -> {response.status_code}: "
        f"{response.text}"
    )
    body: dict[str, Any] = response.json()
    return body


async def create_product(base_url: str, host_token: str, title: str = "Silk scarf") -> str:
    async with http(base_url, host_token) as client:
        product = _ok(
            await client.post(
                "/products",
                json={
                    "title": title,
                    "price": {"amount": "10.00", "currency": "USD"},
                    "stock": 5,
                    "images": [],
                },
            ),
            201,
        )
    return str(product["id"])


async def create_live_room(
    base_url: str, host_token: str, title: str = "E2E room", *, pin: bool = True
) -> str:
    """A room started by its host, with a product pinned; its id."""
    async with http(base_url, host_token) as client:
        room = _ok(await client.post("/rooms", json={"title": title}), 201)
        assert room["status"] == "scheduled", room
        room_id = str(room["id"])
        started = _ok(await client.post(f"/rooms/{room_id}/start"))
        assert started["status"] == "live", started
    if pin:
        product_id = await create_product(base_url, host_token)
        async with http(base_url, host_token) as client:
            _ok(await client.post(f"/rooms/{room_id}/showcase", json={"product_id": product_id}))
    return room_id


async def end_room(base_url: str, host_token: str, room_id: str) -> dict[str, Any]:
    async with http(base_url, host_token) as client:
        return _ok(await client.post(f"/rooms/{room_id}/end"))


async def room_stats(base_url: str, host_token: str, room_id: str) -> dict[str, Any]:
    async with http(base_url, host_token) as client:
        return _ok(await client.get(f"/rooms/{room_id}/stats"))


async def live_room_ids(base_url: str) -> list[str]:
    async with http(base_url) as client:
        body = _ok(await client.get("/rooms", params={"status": "live", "limit": 100}))
    return [str(item["id"]) for item in body["items"]]


async def metric(base_url: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample (0 when absent)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0, trust_env=False) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0
