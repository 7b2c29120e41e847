"""One measurement for `bench/orderstore.py`, in a process of its own: the CPU this process
spends per order made by one of

- `store`: `MongoOrderStore.create`;
- `bare`: a bare PyMongo `insert_many` of the same documents (the limit for the store);
- `claim`: `OrderService.claim`, the whole claim behind the HTTP and websocket endpoints
  (reservation script, order, attach, `order.updated`), in the app that `create_app` builds.

Run as a file, never as `bench.orderstore_child`: `server` must come from PYTHONPATH (the
commit being measured), not from the repository the bench lives in. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import uvloop
from pymongo import AsyncMongoClient, WriteConcern

from server.adapters.mongo.order_docs import order_doc
from server.adapters.mongo.orders import MongoOrderStore, ensure_order_indexes
from server.app import create_app
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.offers import FlashOffer
from server.domain.orders import Address, Order, place_order
from server.settings import Settings

WARM_UP = 100  # orders made before measuring (bench/orderstore.py counts them too)
NOW = datetime.now(UTC)
HOST = Identity("host-bench", Role.HOST)
OFFER = FlashOffer(
    id=f"of_{uuid.uuid4().hex[:8]}",
    room_id="r_bench",
    product_id="p_bench",
    host_id=HOST.user_id,
    price=Money(Decimal("12.50"), "USD"),
    quantity=1_000_000,
    per_user_limit=5,
    starts_at=NOW,
    ends_at=NOW + timedelta(minutes=30),
    created_at=NOW,
)
ADDRESS = Address.clean(
    name="Mia Chen", line1="Friedrichstr. 12", city="Berlin", postal_code="10117", country="DE"
)

Write = Callable[[list[int]], Awaitable[object]]  # makes one order per buyer number
_buyers = itertools.count()  # a buyer never claims twice


def _order(i: int) -> Order:
    return place_order(
        order_id=f"o_{uuid.uuid4().hex}",
        idempotency_key=f"u{i}:{uuid.uuid4().hex}",
        offer=OFFER,
        buyer_id=f"u{i}",
        product={"title": "Silk scarf", "hs_code": "611710", "price": Decimal("12.50")},
        quantity=1,
        address=ADDRESS,
        now=datetime.now(UTC),
        reservation_id=f"res-{i}",
        reservation_ttl=timedelta(minutes=15),
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _per_order(
    write: Write, orders: int, together: int, mongod: psutil.Process
) -> dict[str, float]:
    """CPU (this process's and mongod's) and wall time per order, `together` orders made at
    the same moment each time."""
    batches = [[next(_buyers) for _ in range(together)] for _ in range(orders // together)]
    cpu, wall, mongod_cpu = _cpu(), time.perf_counter(), sum(mongod.cpu_times()[:2])
    for batch in batches:
        await write(batch)
    done = len(batches) * together
    return {
        "cpu_us": 1e6 * (_cpu() - cpu) / done,
        "wall_us": 1e6 * (time.perf_counter() - wall) / done,
        "mongod_cpu_us": 1e6 * (sum(mongod.cpu_times()[:2]) - mongod_cpu) / done,
    }


@asynccontextmanager
async def _writer(args: argparse.Namespace) -> AsyncIterator[Write]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.url, tz_aware=True)
    db = client[args.database]
    await ensure_order_indexes(db)
    store = MongoOrderStore(db)
    bare = db.get_collection("orders", write_concern=WriteConcern(w="majority"))

    async def insert(batch: list[int]) -> object:
        # The least a store could do: the same documents, in one insert.
        return await bare.insert_many([order_doc(_order(i)) for i in batch], ordered=False)

    async def create(batch: list[int]) -> object:
        # As claims do: each order its own call, made at the same moment.
        return await asyncio.gather(*(store.create(_order(i)) for i in batch))

    try:
        if args.what == "claim":
            async with _claims(args) as claim:
                yield claim
        else:
            yield insert if args.what == "bare" else create
    finally:
        await store.close()
        await client.close()


@asynccontextmanager
async def _claims(args: argparse.Namespace) -> AsyncIterator[Write]:
    """Claims on a live offer, each by another buyer, through the app's own OrderService."""
    with tempfile.TemporaryDirectory(prefix="liveshop-claims-") as tmp:
        settings = Settings(
            redis_url=args.redis_url,
            mongodb_url=args.url,
            mongodb_database=args.database,
            data_dir=Path(tmp),
            secret="bench-only-secret-never-use-in-production",
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
                quantity=10**6,
                per_user_limit=1,
                countdown_seconds=0,
                duration_seconds=3600,
            )
            offer = launched.offer

            async def claim(batch: list[int]) -> object:
                return await asyncio.gather(
                    *(
                        container.order_service.claim(
                            offer.id,
                            Identity(f"buyer-{i}", Role.SHOPPER),
                            quantity=1,
                            idempotency_key=f"k{i}",
                            address=ADDRESS,
                        )
                        for i in batch
                    )
                )

            yield claim


async def _figures(store: Any) -> Any:
    """The offer's figures, through whichever call the measured commit's store has."""
    if hasattr(store, "figures_of_offers"):
        return (await store.figures_of_offers([OFFER.id]))[0]
    return await store.offer_figures(OFFER.id)  # the stores before figures_of_offers


async def _figures_read_ms(args: argparse.Namespace) -> dict[str, float]:
    """How long the host's figures take to read for an offer of `--figures-orders` orders
    (those written above, topped up with bare inserts)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.url, tz_aware=True)
    store = MongoOrderStore(client[args.database])
    orders = client[args.database]["orders"]
    while (missing := args.figures_orders - await orders.count_documents({})) > 0:
        batch = [order_doc(_order(next(_buyers))) for _ in range(min(missing, 1000))]
        await orders.insert_many(batch, ordered=False)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        figures = await _figures(store)
        times.append(1e3 * (time.perf_counter() - start))
    await client.drop_database(args.database)
    await client.close()
    return {"orders": figures.orders, "ms": sorted(times)[len(times) // 2]}


async def main(args: argparse.Namespace) -> None:
    mongod = psutil.Process(args.mongod_pid)
    async with _writer(args) as write:
        await _per_order(write, WARM_UP, 1, mongod)  # connections, caches
        result: dict[str, Any] = {
            str(n): await _per_order(write, args.orders, n, mongod) for n in args.together
        }
    if args.what == "store":
        result["figures_read"] = await _figures_read_ms(args)
    else:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.url)
        await client.drop_database(args.database)
        await client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="MongoDB")
    parser.add_argument("--redis-url", help="valkey, for --what claim")
    parser.add_argument("--database", required=True)
    parser.add_argument("--mongod-pid", type=int, required=True)
    parser.add_argument("--figures-orders", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=800)
    parser.add_argument("--together", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--what", choices=("store", "bare", "claim"), default="store")
    uvloop.run(main(parser.parse_args()))
