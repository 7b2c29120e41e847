"""One measurement for `bench/redisloss.py`, in a process of its own: a burst of claims arriving
at the same moment on a flash offer that already has `--sold` orders, in the app that
`create_app` builds, with its stock

- `in_place`: in Redis, as it should be (what the same burst costs when nothing was lost);
- `lost`: gone, FLUSHALL just before the burst (Redis lost its data mid-sale).

Run as a file, never as `bench.redisloss_child`: `server` must come from PYTHONPATH (the commit
being measured), not from the repository the bench lives in. Only APIs that d85ced4 has too:
`create_app`, the container's room, offer and order services, the `Settings` fields below.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as redis
import uvloop
from pymongo import AsyncMongoClient

from server.app import create_app
from server.domain.errors import LiveshopError
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.orders import Address
from server.settings import Settings

HOST = Identity("host-bench", Role.HOST)
ADDRESS = Address.clean(
    name="Mia Chen", line1="Friedrichstr. 12", city="Berlin", postal_code="10117", country="DE"
)
ORDER = "order"  # the outcome of a claim that got its order


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _outcome(answer: object) -> str:
    """`order`, or the error's code (an error that is not Liveshop's: its type)."""
    if isinstance(answer, LiveshopError):
        return answer.code
    if isinstance(answer, BaseException):
        return type(answer).__name__
    return ORDER


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


async def _orders_by_status(args: argparse.Namespace, offer_id: str) -> dict[str, int]:
    """The offer's orders in MongoDB, by status."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.url)
    try:
        orders = client[args.database]["orders"]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"offer_id": offer_id}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ]
        return {doc["_id"]: doc["n"] async for doc in await orders.aggregate(pipeline)}
    finally:
        await client.close()


async def _flushall(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def main(args: argparse.Namespace) -> None:
    mongod = psutil.Process(args.mongod_pid)
    await _flushall(args.redis_url)  # the valkey is shared: each measurement starts on a clean one
    quantity = args.sold + args.claims  # enough for every claim
    result: dict[str, Any] = {"variant": args.variant, "sold": args.sold, "claims": args.claims}
    # The app's deadline for a MongoDB call (its client's timeoutMS): the default unless given.
    timeout = {"mongodb_timeout_seconds": args.mongodb_timeout} if args.mongodb_timeout else {}
    with tempfile.TemporaryDirectory(prefix="liveshop-redisloss-") as tmp:
        settings = Settings(
            redis_url=args.redis_url,
            mongodb_url=args.url,
            mongodb_database=args.database,
            data_dir=Path(tmp),
            secret="bench-only-secret-never-use-in-production",
            **timeout,
        )
        app = create_app(settings)
        async with app.app.router.lifespan_context(app.app):
            container = app.app.state.container
            rooms, offers = container.room_service, container.offer_service
            product = await rooms.create_product(
                HOST,
                title="Silk scarf",
                price=Money(Decimal("24.90"), "USD"),
                stock=10**6,
                images=[],
            )
            room = await rooms.create_room(HOST, "Bench")
            await rooms.start(room.id, HOST)
            launched = await offers.launch(
                room.id,
                HOST,
                product_id=product.id,
                price=Money(Decimal("12.50"), "USD"),
                quantity=quantity,
                per_user_limit=1,
                countdown_seconds=0,
                duration_seconds=3600,
            )
            offer_id = launched.offer.id

            async def claim(i: int) -> tuple[str, float]:
                """Buyer i's claim: its outcome and the seconds it took to be answered."""
                start = time.perf_counter()
                try:
                    await container.order_service.claim(
                        offer_id,
                        Identity(f"buyer-{i}", Role.SHOPPER),
                        quantity=1,
                        idempotency_key=f"k{i}",
                        address=ADDRESS,
                    )
                except Exception as error:  # every answer is counted
                    return _outcome(error), time.perf_counter() - start
                return ORDER, time.perf_counter() - start

            sold = await asyncio.gather(*(claim(i) for i in range(args.sold)))
            result["sold_outcomes"] = dict(Counter(outcome for outcome, _ in sold))

            if args.variant == "lost":
                await _flushall(args.redis_url)
            cpu, mongod_cpu = _cpu(), sum(mongod.cpu_times()[:2])
            start = time.perf_counter()
            answers = await asyncio.gather(
                *(claim(args.sold + i) for i in range(args.claims)), return_exceptions=True
            )
            result["wall_s"] = time.perf_counter() - start
            result["cpu_s"] = _cpu() - cpu
            result["mongod_cpu_s"] = sum(mongod.cpu_times()[:2]) - mongod_cpu
            timed = [a if isinstance(a, tuple) else (_outcome(a), 0.0) for a in answers]
            result["outcomes"] = dict(Counter(outcome for outcome, _ in timed))
            result["answer_s"] = {
                outcome: _percentiles([s for o, s in timed if o == outcome])
                for outcome in result["outcomes"]
            }
            result["orders_after_burst"] = await _orders_by_status(args, offer_id)
        # Once the app has shut down: whatever it was still doing in the background is over.
        result["orders_at_end"] = await _orders_by_status(args, offer_id)
        result["wall_to_end_s"] = time.perf_counter() - start
        result["cpu_to_end_s"] = _cpu() - cpu
    result["quantity"] = quantity
    sold_orders = result["sold_outcomes"].get(ORDER, 0)
    burst_orders = result["outcomes"].get(ORDER, 0)
    pending = result["orders_at_end"].get("pending_payment", 0)
    result["orders_expected"] = sold_orders + burst_orders
    result["orders_ok"] = pending == sold_orders + burst_orders and pending <= quantity
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.url)
    await client.drop_database(args.database)
    await client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="MongoDB")
    parser.add_argument("--redis-url", required=True, help="valkey (FLUSHALL: never a shared one)")
    parser.add_argument("--database", required=True)
    parser.add_argument("--mongod-pid", type=int, required=True)
    parser.add_argument("--variant", choices=("in_place", "lost"), required=True)
    parser.add_argument("--sold", type=int, default=250, help="orders before the burst")
    parser.add_argument("--claims", type=int, default=1500, help="claims in the burst")
    parser.add_argument("--mongodb-timeout", type=float, help="seconds; default: Settings'")
    uvloop.run(main(parser.parse_args()))
