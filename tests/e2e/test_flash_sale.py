"""Flash sales across real server processes: no oversell when claims land on both, the end by
time happens once even after the launching process died, and stock is rebuilt exactly after
Redis loses its data."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from pymongo import MongoClient

from tests.e2e.api import create_live_room, http, make_token, unique
from tests.e2e.conftest import Cluster, server_env
from tests.e2e.processes import LiveshopProcess, running
from tests.e2e.wsclient import WsClient
from tests.servers import RedisServer

ADDRESS = {
    "name": "Ana",
    "line1": "Rua 1",
    "city": "Lisboa",
    "postal_code": "1000-001",
    "country": "PT",
}


async def launch(base_url: str, host: str, room_id: str, quantity: int, **extra: Any) -> str:
    async with http(base_url, host) as client:
        product = await client.post(
            "/products",
            json={
                "title": "Serum",
                "price": {"amount": "20.00", "currency": "USD"},
                "stock": 1000,
                "images": [],
            },
        )
        assert product.status_code == 201, product.text
        offer = await client.post(
            f"/rooms/{room_id}/offers",
            json={
                "product_id": product.json()["id"],
                "price": {"amount": "9.90", "currency": "USD"},
                "quantity": quantity,
                "per_user_limit": 1,
                **extra,
            },
        )
        assert offer.status_code == 201, offer.text
        return str(offer.json()["id"])


async def claim(base_url: str, offer_id: str, user: str, key: str) -> httpx.Response:
    async with http(base_url, make_token(user)) as client:
        return await client.post(
            f"/offers/{offer_id}/claims",
            json={"quantity": 1, "shipping_address": ADDRESS},
            headers={"Idempotency-Key": key},
        )


def orders_of(mongodb_url: str, database: str, offer_id: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_url)
    try:
        return list(client[database]["orders"].find({"offer_id": offer_id}))
    finally:
        client.close()


async def test_claims_on_both_processes_never_oversell(cluster: Cluster) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host, pin=False)
    async with await WsClient.connect(cluster.b.ws_url(room_id), name="watcher") as watcher:
        await watcher.hello()
        offer_id = await launch(cluster.a.base_url, host, room_id, quantity=15)
        buyers = [unique("buyer") for _ in range(40)]
        calls = [
            claim(process.base_url, offer_id, buyer, "k1")
            for i, buyer in enumerate(buyers)
            for process in ((cluster.a, cluster.b) if i % 4 == 0 else (cluster.a,))  # retries
        ]
        answers = await asyncio.gather(*calls)
        assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers]
        assert {a.json()["code"] for a in answers if a.status_code == 409} <= {
            "sold_out",
            "offer_not_active",
        }
        ended = await watcher.recv_until("offer.ended", 10)
        assert ended["reason"] == "sold_out"
        await asyncio.sleep(1.5)
        assert len([f for f in watcher.room_events() if f["type"] == "offer.ended"]) == 1
    orders = orders_of(cluster.mongodb_url, cluster.database, offer_id)
    assert sum(order["quantity"] for order in orders) == 15
    assert len({order["buyer_id"] for order in orders}) == 15
    assert len({order["idempotency_key"] for order in orders}) == 15
    won = {a.json()["id"] for a in answers if a.status_code == 201}
    assert won == {order["_id"] for order in orders}


@pytest.fixture
def own_pair(
    redis_server: RedisServer, mongodb_url: str, mongo_database_name: str
) -> Iterator[tuple[LiveshopProcess, LiveshopProcess, RedisServer]]:
    """Two processes with a Redis and a database of their own: the package's cluster would
    otherwise end these offers too, and tell its own Redis."""
    env = server_env(redis_server.url, mongodb_url, mongo_database_name)
    with running([LiveshopProcess(env, name="FA"), LiveshopProcess(env, name="FB")]) as both:
        yield both[0], both[1], redis_server


async def test_the_end_by_time_survives_the_launcher_dying(
    own_pair: tuple[LiveshopProcess, LiveshopProcess, RedisServer],
) -> None:
    launcher, survivor, _ = own_pair
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(survivor.base_url, host, pin=False)
    async with await WsClient.connect(survivor.ws_url(room_id), name="watcher") as watcher:
        await watcher.hello()
        offer_id = await launch(launcher.base_url, host, room_id, quantity=5, duration_seconds=10)
        await watcher.recv_until("offer.started", 5)
        os.kill(launcher.pid, signal.SIGKILL)
        ended = await watcher.recv_until("offer.ended", 20)
        assert (ended["offer_id"], ended["reason"]) == (offer_id, "expired")
        await asyncio.sleep(2)
        assert len([f for f in watcher.room_events() if f["type"] == "offer.ended"]) == 1


async def offer_with_early_orders(server: LiveshopProcess, quantity: int) -> str:
    """A new host's offer of `quantity` in a live room, of which buyers early-0 to early-2
    have claimed one unit each (key "k"). Its id."""
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(server.base_url, host, pin=False)
    offer_id = await launch(server.base_url, host, room_id, quantity=quantity)
    for n in range(3):
        assert (await claim(server.base_url, offer_id, f"early-{n}", "k")).status_code == 201
    return offer_id


async def test_stock_is_rebuilt_exactly_after_redis_loses_it(
    own_pair: tuple[LiveshopProcess, LiveshopProcess, RedisServer],
    mongodb_url: str,
    mongo_database_name: str,
) -> None:
    first, second, redis = own_pair
    offer_id = await offer_with_early_orders(first, quantity=10)
    await asyncio.to_thread(redis.restart)  # no persistence: every reservation is gone
    answer = None
    for _ in range(50):  # the servers reconnect to Redis within moments
        answer = await claim(second.base_url, offer_id, "after-restart", "k")
        if answer.status_code != 503:
            break
        await asyncio.sleep(0.2)
    assert answer is not None
    assert answer.status_code == 201, answer.text
    retry = await claim(first.base_url, offer_id, "early-0", "k")
    assert (retry.status_code, retry.headers["Idempotent-Replayed"]) == (201, "true")
    async with http(first.base_url) as client:
        offer = (await client.get(f"/offers/{offer_id}")).json()
    assert offer["remaining"] == 10 - 4
    assert len(orders_of(mongodb_url, mongo_database_name, offer_id)) == 4


async def live_room_with_product(cluster: Cluster) -> tuple[str, str, str]:
    """A new host's token, live room and product with a stock of 10."""
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host, pin=False)
    async with http(cluster.a.base_url, host) as client:
        product = await client.post(
            "/products",
            json={"title": "Serum", "price": {"amount": "20.00", "currency": "USD"}, "stock": 10},
        )
    return host, room_id, str(product.json()["id"])


async def test_launches_of_one_product_on_two_processes_at_once_book_its_stock_once(
    cluster: Cluster,
) -> None:
    host, room_id, product_id = await live_room_with_product(cluster)
    offer = {
        "product_id": product_id,
        "price": {"amount": "9.90", "currency": "USD"},
        "quantity": 6,
        "per_user_limit": 1,
    }

    async def launch_on(server: LiveshopProcess) -> httpx.Response:
        async with http(server.base_url, host) as client:
            return await client.post(f"/rooms/{room_id}/offers", json=offer)

    answers = await asyncio.gather(*(launch_on(s) for s in (cluster.a, cluster.b) * 2))
    assert sorted(answer.status_code for answer in answers) == [201, 409, 409, 409]
    refused = [answer.json() for answer in answers if answer.status_code == 409]
    assert {problem["code"] for problem in refused} == {"insufficient_stock"}
    assert "4 units of the product's stock of 10" in refused[0]["detail"]
    client: MongoClient[dict[str, Any]] = MongoClient(cluster.mongodb_url)
    with client:
        stored = list(client[cluster.database]["offers"].find({"product_id": offer["product_id"]}))
    assert [doc["quantity"] for doc in stored] == [6]


async def test_a_host_can_relaunch_what_a_stopped_offer_left_at_once(cluster: Cluster) -> None:
    """A price drop mid-show: the host stops an offer on one process and launches what it left
    on the other, without waiting for the stopped offer to settle."""
    host, room_id, product_id = await live_room_with_product(cluster)
    terms = {"product_id": product_id, "price": {"amount": "9.90", "currency": "USD"}}

    async def launch_on(server: LiveshopProcess, quantity: int) -> httpx.Response:
        async with http(server.base_url, host) as client:
            return await client.post(
                f"/rooms/{room_id}/offers",
                json={**terms, "quantity": quantity, "per_user_limit": 1},
            )

    first = (await launch_on(cluster.a, 10)).json()["id"]
    for n, server in enumerate((cluster.a, cluster.b, cluster.b)):
        assert (await claim(server.base_url, first, unique("buyer"), f"k{n}")).status_code == 201
    async with http(cluster.b.base_url, host) as client:
        assert (await client.post(f"/offers/{first}/stop")).status_code == 200
    too_many = await launch_on(cluster.a, 8)
    assert too_many.status_code == 409
    assert "7 units of the product's stock of 10" in too_many.json()["detail"]
    cheaper = await launch_on(cluster.a, 7)
    assert cheaper.status_code == 201, cheaper.text
    assert (await claim(cluster.b.base_url, cheaper.json()["id"], unique("buyer"), "k")).is_success


async def test_a_redis_that_restarts_from_an_older_snapshot_sells_nothing_twice(
    own_pair: tuple[LiveshopProcess, LiveshopProcess, RedisServer],
    mongodb_url: str,
    mongo_database_name: str,
) -> None:
    first, second, redis_server = own_pair
    offer_id = await offer_with_early_orders(first, quantity=6)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.save()  # the snapshot a crash will go back to
    finally:
        admin.close()
    for n in range(3):  # these sell it out, after the snapshot
        assert (await claim(second.base_url, offer_id, f"late-{n}", "k")).status_code == 201
    # Killed, and started again from the snapshot: its copy of the offer runs, 3 units left.
    await asyncio.to_thread(redis_server.restart)
    answers = []
    for n in range(20):
        answers.append(await claim(first.base_url, offer_id, f"after-{n}", "k"))
        await asyncio.sleep(0.1)
    assert {a.status_code for a in answers} <= {409, 503}, [a.text for a in answers]
    assert answers[-1].json()["code"] == "sold_out", answers[-1].text
    retry = await claim(second.base_url, offer_id, "late-2", "k")  # its key, after the snapshot
    assert (retry.status_code, retry.headers["Idempotent-Replayed"]) == (201, "true")
    async with http(first.base_url) as client:
        offer = (await client.get(f"/offers/{offer_id}")).json()
    assert (offer["remaining"], offer["end_reason"]) == (0, "sold_out")
    assert len(orders_of(mongodb_url, mongo_database_name, offer_id)) == 6
