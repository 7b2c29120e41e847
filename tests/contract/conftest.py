"""The MongoDB database the store contract suites run their Mongo side against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from server.adapters.mongo.orders import ensure_order_indexes
from server.adapters.mongo.stores import ensure_indexes


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
