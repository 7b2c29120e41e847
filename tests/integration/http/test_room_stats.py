"""The host's live figures over HTTP (`GET /rooms/{id}/stats`) on a real server, Redis and
MongoDB: viewers now apart from the peak, and GMV summed per currency, never across them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
import websockets
from pymongo import AsyncMongoClient
from websockets.asyncio.client import ClientConnection

from server.adapters.mongo.orders import MongoOrderStore
from server.adapters.mongo.stores import MongoRoomStore
from server.app import create_app
from server.domain.errors import Unavailable
from server.domain.orders import OrderStatus
from tests.integration.channels.live import (
    Live,
    live_settings,
    recv,
    recv_type,
    serving_live_room,
    token,
)
from tests.integration.channels.test_flash_offers import ADDRESS
from tests.unit.services.shop import move_in_store


@pytest_asyncio.fixture
async def live(
    clean_redis: str, mongodb_url: str, mongo_database_name: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Live]:
    """A live room on a real server whose database cannot keep the room's counters: the peak
    the host reads is then Redis's alone, not one kept the moment it was reached."""

    async def keeps_nothing(self: MongoRoomStore, room_id: str, likes: int, peak: int) -> Any:
        raise Unavailable("the database is away")

    monkeypatch.setattr(MongoRoomStore, "keep_counters", keeps_nothing)  # before the app binds it
    settings = live_settings(clean_redis, mongodb_url, mongo_database_name)
    async with serving_live_room(create_app(settings)) as live:
        yield live


async def stats(live: Live) -> dict[str, Any]:
    answer = await live.host("GET", f"/rooms/{live.room_id}/stats")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def until_viewers(ws: ClientConnection, count: int) -> None:
    """Until the room is told `count` viewers (the counters ticked with them in Redis)."""
    while (await recv_type(ws, "viewers"))["count"] != count:
        pass


async def test_the_host_sees_viewers_now_below_the_peak(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as leo:
        await recv(leo)
        async with websockets.connect(live.url("mia")) as mia:
            await recv(mia)
            await until_viewers(leo, 2)
        await until_viewers(leo, 1)  # mia left
        figures = await stats(live)
    assert figures["live_counters"] is True
    assert (figures["viewers"], figures["peak_viewers"]) == (1, 2)


async def launch(live: Live, price: str, currency: str) -> str:
    """An offer in the room of a product priced in `currency`, at `price` a unit."""
    money = {"amount": price, "currency": currency}
    product = await live.host(
        "POST", "/products", {"title": f"Serum {currency}", "price": money, "stock": 10}
    )
    assert product.status_code == 201, product.text
    body = {"product_id": product.json()["id"], "price": money, "quantity": 5, "per_user_limit": 2}
    offer = await live.host("POST", f"/rooms/{live.room_id}/offers", body)
    assert offer.status_code == 201, offer.text
    return str(offer.json()["id"])


async def claim(live: Live, offer_id: str, user: str, quantity: int) -> str:
    answer = await live.http.post(
        f"/api/v1/offers/{offer_id}/claims",
        json={"quantity": quantity, "shipping_address": ADDRESS},
        headers={"Authorization": f"Bearer {token(user)}", "Idempotency-Key": "k1"},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_the_host_sees_gmv_per_currency_never_summed_across_them(
    live: Live, mongodb_url: str, mongo_database_name: str
) -> None:
    in_usd = await launch(live, "9.90", "USD")
    in_eur = await launch(live, "4.50", "EUR")
    paid = [
        await claim(live, in_usd, "leo", 2),
        await claim(live, in_eur, "leo", 1),
        await claim(live, in_eur, "mia", 2),
    ]
    await claim(live, in_usd, "mia", 1)  # never paid: no GMV
    # Paid as a payment connector will record it, straight in the order store.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        store = MongoOrderStore(client[mongo_database_name])
        for order_id in paid:
            await move_in_store(store, order_id, OrderStatus.PAID, at=datetime.now(UTC))
        await store.close()
    finally:
        await client.close()

    figures = await stats(live)

    assert figures["gmv"] == [
        {"amount": "13.50", "currency": "EUR"},
        {"amount": "19.80", "currency": "USD"},
    ]
    by_offer = {f["offer_id"]: f["gmv"] for f in figures["offers"]}
    assert by_offer == {
        in_usd: [{"amount": "19.80", "currency": "USD"}],
        in_eur: [{"amount": "13.50", "currency": "EUR"}],
    }
    assert (figures["paid_orders"], figures["orders_placed"]) == (3, 4)
