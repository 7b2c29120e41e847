"""Redis or MongoDB down or frozen while shoppers claim: every claim is answered "try again"
(503 with Retry-After over HTTP, an `unavailable` error frame on the websocket) within the
backend's timeout, never a 500 and never a hang, and the same claim sent again once the
backend is back ends with exactly one order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from server.adapters.mongo.embedded import EmbeddedMongo
from tests.e2e.api import create_live_room, http, make_token, unique
from tests.e2e.conftest import server_env
from tests.e2e.processes import LiveshopProcess, running
from tests.e2e.test_flash_sale import ADDRESS, launch, orders_of
from tests.e2e.wsclient import WsClient
from tests.servers import RedisServer, frozen

# Each request's client timeout: a hung answer fails the test. Well under what a shopper's app
# waits, and under the 20 s (Redis) and 40 s (MongoDB) that a claim waited on a frozen backend
# before the client timeouts were bounded.
PATIENCE_SECONDS = 15.0
MONGODB_TIMEOUT_SECONDS = 2


def claim_body() -> dict[str, object]:
    return {"quantity": 1, "shipping_address": ADDRESS}


async def claim(client: httpx.AsyncClient, offer_id: str, user: str, key: str) -> httpx.Response:
    headers = {"Idempotency-Key": key, "Authorization": f"Bearer {make_token(user)}"}
    return await client.post(f"/offers/{offer_id}/claims", json=claim_body(), headers=headers)


def assert_try_again(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "unavailable"
    # Answered, not crashed: a 500 from an unhandled error also closes the connection.
    assert answer.headers.get("connection") != "close"


async def claim_until_answered(
    client: httpx.AsyncClient, offer_id: str, user: str, key: str
) -> httpx.Response:
    """The same claim again until it is no longer "try again" (the backend is back)."""
    deadline = time.monotonic() + 30
    while True:
        answer = await claim(client, offer_id, user, key)
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.2)


def ws_claim(offer_id: str, key: str) -> dict[str, object]:
    return {
        "type": "offer.claim",
        "offer_id": offer_id,
        "idempotency_key": key,
        "shipping_address": ADDRESS,
    }


@asynccontextmanager
async def live_offer(
    env: dict[str, str], name: str, quantity: int
) -> AsyncIterator[tuple[LiveshopProcess, str, str, str]]:
    """One server process with a live room and a running offer: (server, room id, offer id,
    the host's token)."""
    with running([LiveshopProcess(env, name=name)]) as (server,):
        host = make_token(unique("host"), "host")
        room_id = await create_live_room(server.base_url, host, pin=False)
        offer_id = await launch(server.base_url, host, room_id, quantity=quantity)
        yield server, room_id, offer_id, host


async def test_claims_while_redis_is_down_or_frozen_are_answered_try_again(
    redis_server: RedisServer, mongodb_url: str, mongo_database_name: str
) -> None:
    env = server_env(redis_server.url, mongodb_url, mongo_database_name)
    async with live_offer(env, "RO", 10) as (server, room_id, offer_id, host):
        shopper = unique("ws-shopper")
        async with (
            http(server.base_url) as client,
            await WsClient.connect(server.ws_url(room_id, make_token(shopper))) as socket,
        ):
            client.timeout = httpx.Timeout(PATIENCE_SECONDS)
            await socket.hello()
            assert (await claim(client, offer_id, "before", "k")).status_code == 201

            with frozen(redis_server.pid):  # a hung Redis or a partition
                assert_try_again(await claim(client, offer_id, "frozen", "k"))

            await asyncio.to_thread(redis_server.stop)
            for _ in range(3):  # the connection stays usable: no 500, no close
                assert_try_again(await claim(client, offer_id, "down", "k"))
            await socket.send(ws_claim(offer_id, "ws-k"))
            refused = await socket.recv_until("error", PATIENCE_SECONDS)
            assert (refused["code"], refused["ref"]) == ("unavailable", "ws-k")
            # The host's figures: MongoDB's stand, Redis's viewers are unknown meanwhile.
            path, bearer = f"/rooms/{room_id}/stats", {"Authorization": f"Bearer {host}"}
            stats = await client.get(path, headers=bearer)
            assert stats.status_code == 200, stats.text
            figures = stats.json()
            assert (figures["viewers"], figures["live_counters"]) == (None, False)
            assert (figures["orders"], figures["orders_placed"]) == (1, 1)

            # Back, and empty (no persistence): the stock is rebuilt from the orders first.
            await asyncio.to_thread(redis_server.start)
            answers = {
                user: await claim_until_answered(client, offer_id, user, "k")
                for user in ("frozen", "down", "before")
            }
        assert {user: a.status_code for user, a in answers.items()} == dict.fromkeys(answers, 201)
        assert answers["before"].headers["Idempotent-Replayed"] == "true"
        orders = orders_of(mongodb_url, mongo_database_name, offer_id)
        assert sorted(order["buyer_id"] for order in orders) == ["before", "down", "frozen"]
        log = server.stderr_text()
        assert "Exception in ASGI application" not in log
        assert "ws_command_failed" not in log  # a known outage is not logged as a bug


async def test_claims_while_mongodb_is_frozen_are_answered_try_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    mongo = EmbeddedMongo(tmp_path / "mongo")
    mongodb_url = await mongo.start()
    env = server_env(
        redis_server.url,
        mongodb_url,
        "frozen",
        LIVESHOP_MONGODB_TIMEOUT_SECONDS=str(MONGODB_TIMEOUT_SECONDS),
    )
    try:
        async with live_offer(env, "MF", 10) as (server, _, offer_id, _):
            shoppers = [f"shopper-{n}" for n in range(4)]
            async with http(server.base_url) as client:
                client.timeout = httpx.Timeout(PATIENCE_SECONDS)
                # The server has read the offer and its product: a claim's next call to MongoDB
                # is its order's write.
                assert (await claim(client, offer_id, "early", "k")).status_code == 201
                with frozen(mongo.pid):
                    # Units reserved in Redis, orders not written: each hears "try again",
                    # including those queued behind the first batch of orders.
                    during = await asyncio.gather(
                        *(claim(client, offer_id, user, "k") for user in shoppers)
                    )
                    for answer in during:
                        assert_try_again(answer)
                held = (await client.get(f"/offers/{offer_id}")).json()  # before any retry
                after = [await claim_until_answered(client, offer_id, u, "k") for u in shoppers]
                offer = (await client.get(f"/offers/{offer_id}")).json()
            assert held["remaining"] == 10 - 1 - len(shoppers)  # they got past the reservation
            assert [answer.status_code for answer in after] == [201] * len(shoppers)
            orders = orders_of(mongodb_url, "frozen", offer_id)
            assert sorted(order["buyer_id"] for order in orders) == ["early", *shoppers]
            assert {a.json()["id"] for a in after} <= {order["_id"] for order in orders}
            assert offer["remaining"] == held["remaining"]  # held for them, not taken twice
    finally:
        await mongo.stop()


async def test_a_cancel_while_redis_is_frozen_gives_the_units_back_once_it_answers(
    redis_server: RedisServer, mongodb_url: str, mongo_database_name: str
) -> None:
    env = server_env(redis_server.url, mongodb_url, mongo_database_name)
    async with live_offer(env, "RC", 3) as (server, _, offer_id, _):
        shopper = unique("shopper")
        async with http(server.base_url, make_token(shopper)) as client:
            client.timeout = httpx.Timeout(PATIENCE_SECONDS)
            order = await claim(client, offer_id, shopper, "k")
            assert order.status_code == 201
            with frozen(redis_server.pid):
                # The cancel stands (it is in MongoDB); the unit cannot go back yet.
                cancelled = await client.post(f"/orders/{order.json()['id']}/cancel")
                assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
            deadline = time.monotonic() + 10
            while (await client.get(f"/offers/{offer_id}")).json()["remaining"] != 3:
                assert time.monotonic() < deadline, "the unit never came back"
                await asyncio.sleep(0.2)
        assert "units_return_deferred" in server.stderr_text()


async def test_a_stop_while_redis_is_frozen_reaches_the_room_without_a_retry(
    redis_server: RedisServer, mongodb_url: str, mongo_database_name: str
) -> None:
    env = server_env(redis_server.url, mongodb_url, mongo_database_name)
    async with live_offer(env, "RE", 3) as (server, room_id, offer_id, host):
        async with (
            http(server.base_url, host) as client,
            await WsClient.connect(server.ws_url(room_id, make_token(unique("viewer")))) as socket,
        ):
            client.timeout = httpx.Timeout(PATIENCE_SECONDS)
            await socket.hello()
            with frozen(redis_server.pid):
                # The end is recorded in MongoDB; neither the stock nor the room heard of it.
                assert_try_again(await client.post(f"/offers/{offer_id}/stop"))
            # The host does not try again: housekeeping finishes the end once Redis answers.
            ended = await socket.recv_until("offer.ended", 40)
            assert (ended["offer_id"], ended["reason"]) == (offer_id, "stopped")
            refused = await claim(client, offer_id, unique("late"), "k")
            assert (refused.status_code, refused.json()["code"]) == (409, "offer_not_active")
        assert await server.logged("offer_end_finished_late", within=10)
