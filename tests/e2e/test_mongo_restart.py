"""MongoDB is killed (SIGKILL, no clean shutdown) while shoppers claim, and comes back: no
acknowledged order is lost, every shopper who retries with the same key ends with one answer,
and the offer's stock still adds up to its orders."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from server.adapters.mongo.embedded import EmbeddedMongo
from tests.e2e.api import create_live_room, http, make_token, unique
from tests.e2e.conftest import server_env
from tests.e2e.processes import LiveshopProcess, running
from tests.e2e.test_flash_sale import ADDRESS, launch
from tests.servers import RedisServer

QUANTITY = 200
SHOPPERS = 8  # claiming at once, each one buyer after another
DOWN_SECONDS = 3.0
FINAL = (201, 409)  # an order, or a refusal: anything else is "try again"


async def claim_until_answered(
    client: httpx.AsyncClient, offer_id: str, user: str, spans: list[tuple[float, float]]
) -> list[httpx.Response]:
    """Claim as a shopper's app does: the same key again after a failure, until answered.
    `spans` gets (sent, answered) on the monotonic clock for each attempt."""
    headers = {"Idempotency-Key": "tap-1", "Authorization": f"Bearer {make_token(user)}"}
    body = {"quantity": 1, "shipping_address": ADDRESS}
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sent = time.monotonic()
        try:
            answer = await client.post(f"/offers/{offer_id}/claims", json=body, headers=headers)
        except httpx.TransportError:
            await asyncio.sleep(0.2)
            continue
        spans.append((sent, time.monotonic()))
        answers.append(answer)
        if answer.status_code in FINAL:
            return answers
        # MongoDB away: a clear "try again", and when.
        assert (answer.status_code, answer.headers.get("retry-after")) == (503, "1"), answer.text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user} never got an answer: {[a.status_code for a in answers]}")


async def test_no_acknowledged_order_is_lost_when_mongod_is_killed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    mongo = EmbeddedMongo(tmp_path / "mongo")
    mongodb_url = await mongo.start()
    revived: EmbeddedMongo | None = None
    env = server_env(redis_server.url, mongodb_url, "restart")
    try:
        with running([LiveshopProcess(env, name="MR")]) as (server,):
            host = make_token(unique("host"), "host")
            room_id = await create_live_room(server.base_url, host, pin=False)
            offer_id = await launch(server.base_url, host, room_id, quantity=QUANTITY)
            answers: dict[str, list[httpx.Response]] = {}
            spans: list[tuple[float, float]] = []
            acknowledged = asyncio.Event()
            outage: list[float] = []  # when mongod was killed, when it answered again

            async def shopper(n: int) -> None:
                async with http(server.base_url) as client:
                    client.timeout = httpx.Timeout(30.0)
                    for turn in range(QUANTITY):
                        user = f"shopper-{n}-{turn}"
                        answers[user] = await claim_until_answered(client, offer_id, user, spans)
                        if answers[user][-1].status_code == 201 and len(answers) > QUANTITY // 10:
                            acknowledged.set()
                        if answers[user][-1].status_code == 409:
                            return  # sold out

            async def crash_and_revive() -> EmbeddedMongo:
                await acknowledged.wait()  # some orders are in, more are on their way
                assert mongo.pid is not None
                os.kill(mongo.pid, signal.SIGKILL)
                outage.append(time.monotonic())
                await mongo.stop()  # reaps the killed process
                await asyncio.sleep(DOWN_SECONDS)
                again = EmbeddedMongo(tmp_path / "mongo", port=mongo.port)
                await again.start()
                outage.append(time.monotonic())
                return again

            *_, revived = await asyncio.gather(
                *(shopper(n) for n in range(SHOPPERS)), crash_and_revive()
            )
            assert revived is not None
            killed, back = outage
            # The crash landed mid-sale: claims were waiting while mongod was away.
            assert any(sent < back and answered > killed + DOWN_SECONDS for sent, answered in spans)
            orders = await stored_orders(revived.url, offer_id)
            won = {a[-1].json()["id"] for a in answers.values() if a[-1].status_code == 201}
            assert won == set(orders)  # nothing acknowledged is lost, nothing unacknowledged kept
            assert len(orders) == QUANTITY
            assert {order["status"] for order in orders.values()} == {"pending_payment"}
            refused = {a[-1].json()["code"] for a in answers.values() if a[-1].status_code == 409}
            assert refused <= {"sold_out"}
            async with http(server.base_url) as client:
                offer = (await client.get(f"/offers/{offer_id}")).json()
            assert offer["remaining"] == 0
            # Asked again with the same key, a buyer gets the order the crash did not take away.
            some_buyer = next(u for u, a in answers.items() if a[-1].status_code == 201)
            async with http(server.base_url) as client:
                again = await claim_until_answered(client, offer_id, some_buyer, spans)
            assert again[-1].status_code == 201
            assert again[-1].headers["Idempotent-Replayed"] == "true"
            assert again[-1].json()["id"] == answers[some_buyer][-1].json()["id"]
    finally:
        await mongo.stop()
        if revived is not None:
            await revived.stop()


async def stored_orders(mongodb_url: str, offer_id: str) -> dict[str, dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        cursor = client["restart"]["orders"].find({"offer_id": offer_id})
        return {order["_id"]: order async for order in cursor}
    finally:
        await client.close()
