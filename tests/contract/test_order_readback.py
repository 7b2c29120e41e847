"""An order found under its key (by a retried claim, the reaper, the late round) is answered,
attached or told of only once the majority of the replica set has it, on a real two-member
replica set whose secondary is frozen (so the order is on the primary alone, where a failover
could roll it back)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from server.adapters.mongo.order_docs import order_doc
from server.adapters.mongo.orders import ORDERS, MongoOrderStore, ensure_order_indexes
from server.adapters.mongo.stores import collection, ensure_indexes
from server.domain.errors import Unavailable
from server.domain.orders import Order
from tests.contract.order_samples import sample_order
from tests.mongo_pair import MongoPair, mongo_pair
from tests.servers import frozen

pytestmark = pytest.mark.mongo

# What mongod answers when the wait for the majority is cut short (a wtimeout, a stepdown).
WRITE_CONCERN_FAILED = {
    "code": 64,
    "codeName": "WriteConcernFailed",
    "errmsg": "waiting for replication timed out",
    "errInfo": {"wtimeout": True},
}


@pytest.fixture
async def pair() -> AsyncIterator[MongoPair]:
    # Not tmp_path: pytest keeps old temp dirs, and two data dirs are ~70 MB.
    with tempfile.TemporaryDirectory(prefix="liveshop-pair-") as data_dir:
        async with mongo_pair(Path(data_dir)) as started:
            yield started


async def answer_once_committed(store: MongoOrderStore, order: Order) -> Order:
    """Retry the claim as a shopper's app does after a 503, until it is answered."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await store.create(order)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@asynccontextmanager
async def order_store(
    pair: MongoPair,
) -> AsyncIterator[tuple[MongoOrderStore, AsyncDatabase[dict[str, Any]]]]:
    """A store of orders on the pair's primary, and its database."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(pair.url)  # finds the primary
    try:
        db = client["liveshop_readback"]
        await ensure_indexes(db)
        await ensure_order_indexes(db)
        store = MongoOrderStore(db)
        yield store, db
        await store.close()
    finally:
        await client.close()


def written_on_the_primary_alone(
    db: AsyncDatabase[dict[str, Any]],
) -> AsyncCollection[dict[str, Any]]:
    """The orders, written as a claim in another process writes them, but acknowledged once
    the primary has them (the secondary frozen, the majority cannot have them yet)."""
    return collection(db, ORDERS).with_options(write_concern=WriteConcern(w=1))


async def test_a_retry_is_not_answered_with_an_order_the_majority_lacks(pair: MongoPair) -> None:
    async with order_store(pair) as (store, db):
        first = sample_order("o_1", "k_1")
        retry = sample_order("o_2", "k_1", quantity=1, seconds=5)
        with frozen(pair.secondary_pid):
            # The first attempt, in another process, is on the primary and not yet on the
            # majority (the secondary is stopped, so the majority commit point stands still).
            await written_on_the_primary_alone(db).insert_one(order_doc(first))
            # mongod makes the retry's refused insert wait for the majority to have the order it
            # clashed with; that wait can end early with a write concern error (a wtimeout, a
            # stepdown). failCommand gives that answer now, rather than at the deadline.
            await db.client.admin.command(
                "configureFailPoint",
                "failCommand",
                mode={"times": 1},
                data={"failCommands": ["insert"], "writeConcernError": WRITE_CONCERN_FAILED},
            )
            with pytest.raises(Unavailable) as refused:
                await store.create(retry)
            assert refused.value.code == "order_write_failed"
            assert "still being written" in str(refused.value)
        # The secondary catches up: the majority has the first order, and the retry gets it.
        assert await answer_once_committed(store, retry) == first


async def test_the_reaper_and_the_late_round_find_only_orders_the_majority_has(
    pair: MongoPair,
) -> None:
    """Both attach the order they find under a key and tell its buyer: told of an order on the
    primary alone, the buyer could see it rolled back by a failover. Not seen yet, it is found
    by a later round once the majority has it."""
    async with order_store(pair) as (store, db):
        order = sample_order("o_1", "k_1")
        now = order.created_at
        await store.watch_key(order.offer_id, order.idempotency_key, until=now + timedelta(hours=1))
        with frozen(pair.secondary_pid):
            await written_on_the_primary_alone(db).insert_one(order_doc(order))
            assert await store.by_key(order.offer_id, order.idempotency_key) is None
            assert await store.landed_late(now, 10) == []
        deadline = time.monotonic() + 30
        while await store.by_key(order.offer_id, order.idempotency_key) is None:
            assert time.monotonic() < deadline, "the secondary never caught up"
            await asyncio.sleep(0.1)
        assert await store.by_key(order.offer_id, order.idempotency_key) == order
        assert await store.landed_late(now, 10) == [order]


async def test_a_rebuild_reads_and_counts_only_orders_the_majority_has(pair: MongoPair) -> None:
    """Counted by a rebuild, an order a failover then rolls back would leave its key naming an
    order that does not exist, its units held for the rest of the offer."""
    async with order_store(pair) as (store, db):
        kept = sample_order("o_1", "k_1")
        await store.create(kept)
        with frozen(pair.secondary_pid):
            await written_on_the_primary_alone(db).insert_one(
                order_doc(sample_order("o_2", "k_2", seconds=5))
            )
            assert await store.of_offer(kept.offer_id) == [kept]
            assert await store.count_of_offer(kept.offer_id) == 1
