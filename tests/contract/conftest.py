"""The MongoDB database the store contract suites run their Mongo side against, and the
stock reservation stores under test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from server.adapters.memory_orders import MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.adapters.mongo.orders import MongoOrderStore, ensure_order_indexes
from server.adapters.mongo.stores import ensure_indexes
from server.adapters.redis_reservations import RedisStockReservations
from tests.contract.order_samples import Stores
from tests.contract.stock_backends import Backend


@pytest.fixture
async def mongo_db(mongodb_url: str, mongo_database_name: str) -> AsyncIterator[Any]:
    """A database of the test's own, with every index the product creates at start-up."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        db = client[mongo_database_name]
        await ensure_indexes(db)
        await ensure_order_indexes(db)
        yield db
    finally:
        await client.close()


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def order_stores(request: pytest.FixtureRequest) -> Stores:
    """An order store, in memory or on a real MongoDB."""
    if request.param == "memory":
        return Stores(MemoryOrderStore())
    db = request.getfixturevalue("mongo_db")  # only here, so memory runs need no MongoDB
    return Stores(MongoOrderStore(db), raw=db)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A stock reservation store, in memory or on a real Redis, and a way to lose its data."""
    if request.param == "memory":
        memory = MemoryStockReservations()

        async def flush_memory() -> None:
            memory.flush()

        yield Backend(memory, flush_memory)
    else:
        url = request.getfixturevalue("clean_redis")
        store = RedisStockReservations(url)
        admin = aioredis.Redis.from_url(url)

        async def flush_redis() -> None:
            await admin.flushall()

        yield Backend(store, flush_redis)
        await store.close()
        await admin.aclose()
