"""One measurement for `bench/orderstore.py`, in a process of its own: the CPU this process
spends per order written through `MongoOrderStore.create`, or through a bare PyMongo
`insert_many` of the same documents (`--bare`, the limit).

Run as a file, never as `bench.orderstore_child`: `server` must come from PYTHONPATH (the
commit being measured), not from the repository the bench lives in. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import uvloop
from pymongo import AsyncMongoClient, WriteConcern

from server.adapters.mongo.order_docs import order_doc
from server.adapters.mongo.orders import MongoOrderStore, ensure_order_indexes
from server.domain.money import Money
from server.domain.offers import FlashOffer
from server.domain.orders import Address, Order, place_order

WARM_UP = 100  # orders written before measuring (bench/orderstore.py counts them too)
NOW = datetime.now(UTC)
OFFER = FlashOffer(
    id=f"of_{uuid.uuid4().hex[:8]}",
    room_id="r_bench",
    product_id="p_bench",
    host_id="host-bench",
    price=Money(Decimal("12.50"), "USD"),
    quantity=1_000_000,
    per_user_limit=5,
    starts_at=NOW,
    ends_at=NOW + timedelta(minutes=30),
    created_at=NOW,
)
ADDRESS = Address(
    name="Mia Chen",
    line1="Friedrichstr. 12",
    line2="3rd floor",
    city="Berlin",
    postal_code="10117",
    country="DE",
    phone="+4930123456",
)


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
    write: Callable[[list[Order]], Awaitable[object]], orders: int, together: int
) -> dict[str, float]:
    """CPU and wall time per order, `together` orders created at the same moment each time."""
    batches = [
        [_order(i * together + j) for j in range(together)] for i in range(orders // together)
    ]
    cpu, wall = _cpu(), time.perf_counter()
    for batch in batches:
        await write(batch)
    done = len(batches) * together
    return {
        "cpu_us": 1e6 * (_cpu() - cpu) / done,
        "wall_us": 1e6 * (time.perf_counter() - wall) / done,
    }


async def main(args: argparse.Namespace) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.url, tz_aware=True)
    db = client[args.database]
    await ensure_order_indexes(db)
    store = MongoOrderStore(db)
    bare = db.get_collection("orders", write_concern=WriteConcern(w="majority"))

    async def insert(batch: list[Order]) -> object:
        # The least a store could do: the same documents, in one insert.
        return await bare.insert_many([order_doc(order) for order in batch], ordered=False)

    async def create(batch: list[Order]) -> object:
        # As claims do: each order its own call, made at the same moment.
        return await asyncio.gather(*(store.create(order) for order in batch))

    write = insert if args.bare else create
    await _per_order(write, WARM_UP, 1)  # connections, caches
    result = {str(n): await _per_order(write, args.orders, n) for n in args.together}
    await store.close()
    await client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--orders", type=int, default=800)
    parser.add_argument("--together", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bare", action="store_true")
    uvloop.run(main(parser.parse_args()))
