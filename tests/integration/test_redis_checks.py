"""The stock's Redis checked again while the server runs: a Redis reconfigured to evict keys
(`CONFIG SET maxmemory-policy allkeys-lru`), or one that could not be asked at start-up, is
noticed on /readyz and refuses claims until it is fixed.

The re-check is driven by calling it (`RedisChecks.run`, `run_if_due`), not by waiting for its
cadence; housekeeping may run it too meanwhile, on the same Redis, to the same verdict.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from channels.broker_memory import MemoryBroker, MemoryBus
from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.redis_access import RedisChecks
from server.adapters.redis_reservations import RedisStockReservations
from server.app import Backends, create_app
from server.container import Container
from server.domain.errors import Unavailable
from server.domain.offers import ClaimOutcome
from server.settings import Settings
from tests.integration.channels.live import SECRET, Live, serving, serving_live_room
from tests.integration.channels.test_flash_offers import claim, launch
from tests.servers import RedisServer

EVICTING = {"maxmemory": "100mb", "maxmemory-policy": "allkeys-lru"}


async def configure(url: str, settings: dict[str, str]) -> None:
    admin = aioredis.Redis.from_url(url)
    try:
        for name, value in settings.items():
            await admin.config_set(name, value)
    finally:
        await admin.aclose()


async def readiness(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    ready = await http.get("/readyz")
    return ready.status_code, dict(ready.json())


def redis_checks(container: Container) -> RedisChecks:
    assert container.redis_checks is not None, "a Redis stock without its checks"
    return container.redis_checks


@pytest_asyncio.fixture
async def served(
    redis_server: RedisServer, mongodb_url: str, mongo_database_name: str
) -> AsyncIterator[tuple[Live, Container]]:
    """A real server on a Redis of the test's own (it reconfigures it), with a live room."""
    settings = Settings(
        secret=SECRET,
        redis_url=redis_server.url,
        mongodb_url=mongodb_url,
        mongodb_database=mongo_database_name,
    )
    app = create_app(settings)
    async with serving_live_room(app) as live:
        yield live, app.state.container


async def test_a_redis_set_to_evict_at_run_time_is_reported_and_refuses_claims(
    served: tuple[Live, Container], redis_server: RedisServer
) -> None:
    live, container = served
    checks = redis_checks(container)
    assert await readiness(live.http) == (
        200,
        {"status": "ready", "checks": {"mongodb": "ok", "broker": "ok", "stock": "ok"}},
    )
    offer = await launch(live, quantity=5, limit=1)

    await configure(redis_server.url, EVICTING)
    await checks.run()
    status, body = await readiness(live.http)
    # Reported, not out of rotation: every process shares the Redis, and the rest of the
    # shop goes on.
    assert (status, body["status"]) == (200, "degraded")
    assert body["checks"]["stock"].startswith("refused: "), body
    assert "maxmemory-policy allkeys-lru" in body["checks"]["stock"]
    assert (body["checks"]["mongodb"], body["checks"]["broker"]) == ("ok", "ok")
    refused = await claim(live, offer["id"], "leo", "k-1")
    assert (refused.status_code, refused.json()["code"]) == (503, "unavailable"), refused.text
    assert "liveshop_stock_redis_refused 1.0" in (await live.http.get("/metrics")).text

    await configure(redis_server.url, {"maxmemory-policy": "noeviction"})
    await checks.run()
    assert await readiness(live.http) == (
        200,
        {"status": "ready", "checks": {"mongodb": "ok", "broker": "ok", "stock": "ok"}},
    )
    taken = await claim(live, offer["id"], "leo", "k-1")
    assert taken.status_code == 201, taken.text
    assert "liveshop_stock_redis_refused 0.0" in (await live.http.get("/metrics")).text


async def test_a_redis_not_checked_at_start_up_is_checked_once_it_answers(
    redis_server: RedisServer,
) -> None:
    """Redis away at start-up: the checks are skipped, not forgotten. (Its stock alone is on
    Redis here, so that the broker's start does not need it.)"""
    redis_server.stop()
    stock = RedisStockReservations(redis_server.url)
    backends = Backends(
        MemoryProductStore(), MemoryRoomStore(), MemoryBroker(MemoryBus(100, 60)), stock=stock
    )
    app = create_app(Settings(secret=SECRET), backends=backends)
    try:
        async with (
            serving(app) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            checks = redis_checks(app.state.container)
            status, body = await readiness(http)
            # Ready, though degraded: the broker is in memory here. Where it is on the same
            # Redis, as in production, its own entry makes a Redis away 503.
            assert (status, body["status"], body["checks"]["stock"]) == (
                200,
                "degraded",
                "unchecked",
            ), body

            # Back, set up to evict keys from its start: whichever of housekeeping's rounds and
            # this call runs first finds it so.
            redis_server.options = tuple(
                word for name, value in EVICTING.items() for word in (f"--{name}", value)
            )
            await asyncio.to_thread(redis_server.start)
            await checks.run_if_due()  # due: it never passed
            status, body = await readiness(http)
            assert (status, body["status"]) == (200, "degraded"), body
            assert "maxmemory-policy allkeys-lru" in body["checks"]["stock"], body

            await configure(redis_server.url, {"maxmemory-policy": "noeviction"})
            await checks.run_if_due()  # due: refused (unless a round of housekeeping passed it)
            assert await readiness(http) == (
                200,
                {"status": "ready", "checks": {"mongodb": "ok", "broker": "ok", "stock": "ok"}},
            )
    finally:
        await stock.close()


async def test_claims_wait_while_the_redis_fails_its_checks(redis_server: RedisServer) -> None:
    stock = RedisStockReservations(redis_server.url)
    now = datetime.now(UTC)
    try:
        await stock.checks.at_start_up()
        opened = await stock.open_offer(
            "f_checked",
            quantity=3,
            per_user_limit=1,
            starts_at=now,
            ends_at=now + timedelta(minutes=5),
        )
        assert opened
        await configure(redis_server.url, EVICTING)
        await stock.checks.run()
        with pytest.raises(Unavailable, match="claims are paused"):
            await stock.claim("f_checked", "leo", 1, "leo:k1", now)
        assert await stock.remaining("f_checked") == 3  # nothing taken

        await configure(redis_server.url, {"maxmemory-policy": "noeviction"})
        await stock.checks.run()
        result = await stock.claim("f_checked", "leo", 1, "leo:k1", now)
        assert (result.outcome, result.remaining) == (ClaimOutcome.RESERVED, 2)
    finally:
        await stock.close()


async def test_a_redis_busy_running_a_script_is_not_taken_for_a_refusal(
    redis_server: RedisServer,
) -> None:
    """`BUSY` (a script past its time limit) answers the check's own script too: Redis cannot
    be asked now, which leaves the verdict as it was, rather than refuse claims for a right
    the user has and log an error that sends the operator to the ACLs."""
    stock = RedisStockReservations(redis_server.url)
    admin = aioredis.Redis.from_url(redis_server.url)
    looping = aioredis.Redis.from_url(redis_server.url, socket_timeout=60)
    try:
        await stock.checks.at_start_up()
        await admin.config_set("busy-reply-threshold", 10)  # milliseconds
        loop = asyncio.create_task(_loop_forever(looping))
        await _until_busy(admin)
        with pytest.raises(Unavailable):
            await stock.checks.run()
        assert stock.checks.status == "ok"
        await admin.script_kill()
        with pytest.raises(aioredis.ResponseError):
            await loop
    finally:
        await admin.aclose()
        await looping.aclose()
        await stock.close()


async def _loop_forever(redis: aioredis.Redis) -> None:
    await redis.execute_command("EVAL", "while true do end", 0)  # type: ignore[no-untyped-call]


async def _until_busy(admin: aioredis.Redis) -> None:
    """Until the script has run past the threshold: Redis answers BUSY."""
    for _ in range(1000):
        try:
            await admin.ping()
        except aioredis.ResponseError as exc:
            if str(exc).startswith("BUSY"):
                return
            raise
        await asyncio.sleep(0.01)
    raise AssertionError("Redis never answered BUSY")
