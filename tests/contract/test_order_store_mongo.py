"""The MongoDB order store's own promises: the stored form and indexes, one insert for a batch
and no transaction, majority write concern, and what a caller hears when a write goes wrong."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from bson import Decimal128
from pymongo import AsyncMongoClient, WriteConcern, monitoring

from server.adapters.mongo.orders import (
    ORDER_WRITE_SECONDS,
    ORDERS,
    REBUILT_OFFERS,
    RELEASED_KEYS,
    MongoOrderStore,
    ensure_order_indexes,
)
from server.domain.errors import Unavailable, Unresponsive
from server.domain.figures import OfferFigures
from server.domain.orders import Order, OrderStatus
from server.domain.pages import PageKey
from tests.contract.order_samples import (
    T0,
    figures_of_offer,
    move_order,
    sample_offer,
    sample_order,
)

S = OrderStatus


async def test_mongo_stored_form(mongo_db: Any) -> None:
    await MongoOrderStore(mongo_db).create(sample_order())
    doc = await mongo_db[ORDERS].find_one({"_id": "o_1"})
    assert doc["total"] == {"amount": Decimal128("25.00"), "currency": "USD"}
    assert doc["shipping_address"]["country"] == "DE"
    assert doc["history"][0]["to"] == "pending_payment"
    assert doc["history"][0]["from"] is None
    # The product as the buyer saw it (its wire form); the order's own money is Decimal128.
    assert doc["product"]["price"] == {"amount": "12.50", "currency": "USD"}
    # An order is one document and nothing else: the figures are counted from the orders.
    for name in await mongo_db.list_collection_names():
        assert await mongo_db[name].count_documents({}) == (1 if name == ORDERS else 0), name


async def test_mongo_an_offer_s_last_build_checked_outlives_its_watch(mongo_db: Any) -> None:
    # Orders noted held by it keep its build: forgotten with the watch, a later stock's
    # build could fall below theirs, and a round would find them again every second.
    store = MongoOrderStore(mongo_db)
    await store.watch_offer("of_1", T0)
    assert await store.note_stock_checked("of_1", 1_796_000_000_000_000) == 1_796_000_000_000_000
    await mongo_db[REBUILT_OFFERS].delete_many({})  # as the TTL monitor does once it is over
    assert await store.last_stock_checked("of_1") == 1_796_000_000_000_000
    await store.close()


async def test_mongo_processes_writing_at_once(mongo_db: Any) -> None:
    # Two stores stand for two server processes, creating and moving orders side by side.
    stores = [MongoOrderStore(mongo_db), MongoOrderStore(mongo_db)]
    orders = [sample_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(160)]
    await asyncio.gather(*(stores[i % 2].create(o) for i, o in enumerate(orders)))
    await asyncio.gather(
        *(move_order(stores[i % 3 % 2], f"o_{i}", S.PAID) for i in range(0, 160, 2))
    )
    for store in stores:
        assert await figures_of_offer(store, "of_1") == OfferFigures(
            "of_1", 160, 160, 80, 80, {"USD": Decimal("1000.00")}, 160, 160
        )


async def test_mongo_indexes(mongo_db: Any) -> None:
    await ensure_order_indexes(mongo_db)  # a second run at the next start is harmless
    info = await mongo_db[ORDERS].index_information()
    assert info["offer_idempotency_key"]["unique"] is True
    assert info["offer_idempotency_key"]["key"] == [("offer_id", 1), ("idempotency_key", 1)]
    assert info["buyer_created_at"]["key"][:2] == [("buyer_id", 1), ("created_at", -1)]
    assert info["room_created_at"]["key"][:2] == [("room_id", 1), ("created_at", -1)]
    assert info["status_expires_at"]["key"] == [("status", 1), ("reservation_expires_at", 1)]
    # A watched key's or offer's note is MongoDB's to delete once its watch is over.
    for watches in (RELEASED_KEYS, REBUILT_OFFERS):
        until = (await mongo_db[watches].index_information())["until"]
        assert (until["key"], until["expireAfterSeconds"]) == ([("until", 1)], 0)


async def test_mongo_creates_arriving_together_share_one_insert(mongo_db: Any) -> None:
    store = MongoOrderStore(mongo_db)
    await store.create(sample_order("o_first", "k_first"))

    async def counts() -> tuple[int, int]:
        status = await mongo_db.client.admin.command("serverStatus")
        return await _insert_commands(mongo_db), int(status["transactions"]["totalStarted"])

    inserts, transactions = await counts()
    orders = [sample_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(150)]
    assert await asyncio.gather(*(store.create(o) for o in orders)) == orders
    assert await counts() == (inserts + 1, transactions)  # one insert, no transaction
    assert await figures_of_offer(store, "of_1") == OfferFigures(
        "of_1", orders=151, units=152, placed=151, held_units=152
    )
    await store.close()


async def test_mongo_a_document_refused_for_another_reason_fails_alone(mongo_db: Any) -> None:
    # A rule of the database's own (here an operator's validator) refuses one order of a batch:
    # its claimer hears "try again", and the others are written all the same.
    await mongo_db.command("collMod", ORDERS, validator={"quantity": {"$lt": 3}})
    store = MongoOrderStore(mongo_db)
    inserts = await _insert_commands(mongo_db)
    results = await asyncio.gather(
        store.create(sample_order("o_1", "k_1", buyer="u_1", quantity=1)),
        store.create(sample_order("o_2", "k_2", buyer="u_2", quantity=3)),
        store.create(sample_order("o_3", "k_3", buyer="u_3", quantity=2)),
        return_exceptions=True,
    )
    assert results[0] == sample_order("o_1", "k_1", buyer="u_1", quantity=1)
    assert isinstance(results[1], Unavailable)
    assert results[1].code == "order_write_failed"
    assert results[2] == sample_order("o_3", "k_3", buyer="u_3", quantity=2)
    assert await _insert_commands(mongo_db) == inserts + 1  # all three in one insert
    assert await store.by_key("of_1", "k_2") is None
    assert await figures_of_offer(store, "of_1") == OfferFigures(
        "of_1", orders=2, units=3, placed=2, held_units=3
    )
    await store.close()


async def _insert_commands(db: Any) -> int:
    status = await db.client.admin.command("serverStatus")
    return int(status["metrics"]["commands"]["insert"]["total"])


async def test_mongo_an_order_not_known_to_be_durable_is_not_acknowledged(mongo_db: Any) -> None:
    # A write concern the replica set cannot confirm (two members on a single node: the same
    # answer as a majority lost in a failover) must not be taken for success.
    store = MongoOrderStore(mongo_db, write_concern=WriteConcern(w=2, wtimeout=1000))
    results = await asyncio.gather(
        store.create(sample_order("o_1", "k_1", buyer="u_1")),
        store.create(sample_order("o_2", "k_2", buyer="u_2")),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, Unavailable)
        assert result.code == "order_write_failed"
    assert results[0] is not results[1]
    # The retry of the claim finds its order, if it was written after all.
    retry = MongoOrderStore(mongo_db)
    assert await retry.create(sample_order("o_1b", "k_1", buyer="u_1")) == sample_order(
        "o_1", "k_1", buyer="u_1"
    )
    await store.close()
    await retry.close()


class BatchCountingStore(MongoOrderStore):
    def __init__(self, db: Any, **options: Any) -> None:
        super().__init__(db, **options)
        self.batches = 0

    async def _create_batch(self, offer_id: str, orders: list[Order]) -> list[Order | Exception]:
        self.batches += 1
        return await super()._create_batch(offer_id, orders)


async def test_mongo_orders_queued_behind_a_batch_that_found_no_server_fail_with_it() -> None:
    # Nothing answers at the address (MongoDB down): the first batch waits out its deadline.
    # The orders queued behind it must hear "try again" then, not wait out a deadline each.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true"
    )
    store = BatchCountingStore(client["liveshop_down"], write_seconds=0.5)
    first = asyncio.create_task(store.create(sample_order("o_0", "k_0", buyer="u_0")))
    await asyncio.sleep(0.1)  # the first batch is on its way
    queued = [store.create(sample_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}")) for i in (1, 2)]
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    # All three ran out the deadline (one each would have taken three): Unresponsive, each.
    assert [type(result) for result in results] == [Unresponsive] * 3
    assert store.batches == 1
    await store.close()
    await client.close()


async def test_mongo_orders_are_written_with_majority_write_concern(mongodb_url: str) -> None:
    inserts: list[dict[str, Any]] = []

    class Inserts(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "insert":
                inserts.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

        def failed(self, event: monitoring.CommandFailedEvent) -> None: ...

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, event_listeners=[Inserts()]
    )
    try:
        store = MongoOrderStore(client[f"wc_{uuid.uuid4().hex[:8]}"])
        await store.create(sample_order())
        assert [i["writeConcern"] for i in inserts] == [{"w": "majority"}]
        # Bounded all in by the client (the write concern's own wtimeout is deprecated): the
        # server gets what is left of the deadline.
        assert 0 < inserts[0]["maxTimeMS"] <= ORDER_WRITE_SECONDS * 1000
        await store.close()
    finally:
        await client.close()


async def test_mongo_processes_creating_the_same_keys_at_once(mongo_db: Any) -> None:
    # Two stores stand for two server processes, each given every claim (a retry that reached
    # the other process): one order per key, and both hear of that one.
    stores = [MongoOrderStore(mongo_db), MongoOrderStore(mongo_db)]
    first = [sample_order(f"o_a{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(200)]
    second = [sample_order(f"o_b{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(200)]
    results = await asyncio.gather(
        *(stores[0].create(o) for o in first), *(stores[1].create(o) for o in second)
    )
    for i in range(200):
        assert results[i] == results[200 + i]
        assert results[i].id in (f"o_a{i}", f"o_b{i}")
    assert await mongo_db[ORDERS].count_documents({}) == 200
    for store in stores:
        await store.close()


async def test_mongo_a_later_page_reads_only_its_own_keys(mongodb_url: str) -> None:
    # The page after a key is read from the list's index from that key on, in order: a buyer
    # with many orders pays for a page, not for every order before it (nor for a sort).
    finds: list[dict[str, Any]] = []

    class Finds(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "find":
                finds.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

        def failed(self, event: monitoring.CommandFailedEvent) -> None: ...

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, event_listeners=[Finds()]
    )
    db = client[f"pages_{uuid.uuid4().hex[:8]}"]
    try:
        await ensure_order_indexes(db)
        store = MongoOrderStore(db)
        for i in range(120):  # three to a second: ties on created_at
            await store.create(sample_order(f"o_{i:03d}", f"k_{i}", seconds=i // 3))
        middle = await store.get("o_061")
        after = PageKey.of(middle)
        for read, scope in [(store.list_for_buyer, "u_1"), (store.list_for_room, "r_1")]:
            finds.clear()
            page = await read(scope, 10, after=after)
            assert [o.id for o in page] == [f"o_{i:03d}" for i in range(60, 50, -1)]
            [find] = finds
            command = {k: find[k] for k in ("find", "filter", "sort", "limit")}
            plan = await db.command("explain", command, verbosity="executionStats")
            stages = str(plan["queryPlanner"]["winningPlan"])
            assert "IXSCAN" in stages, stages
            assert "'SORT'" not in stages, stages  # (SORT_MERGE merges ranges in order)
            assert plan["executionStats"]["totalKeysExamined"] <= 10 + 2  # + the ends of ranges
        await store.close()
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_mongo_a_rebuilt_offers_checked_orders_are_not_read_again(mongodb_url: str) -> None:
    # Once a second in every process for 15 minutes after a rebuild: the orders already
    # checked, or no longer pending, are left in the index, not read.
    finds: list[dict[str, Any]] = []

    class Finds(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "find" and event.command["find"] == ORDERS:
                finds.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

        def failed(self, event: monitoring.CommandFailedEvent) -> None: ...

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, event_listeners=[Finds()]
    )
    db = client[f"rebuilt_{uuid.uuid4().hex[:8]}"]
    try:
        await ensure_order_indexes(db)
        store = MongoOrderStore(db)
        # A loss of Redis's data loses every offer: several are watched at once.
        for offer_id in (f"of_{n}" for n in range(5)):
            offer = sample_offer(offer_id)
            for i in range(200):
                order_id = f"{offer_id}_{i:03d}"
                await store.create(sample_order(order_id, f"k_{i}", offer=offer, seconds=i))
            await store.watch_offer(offer_id, T0 + timedelta(minutes=15))
            await store.note_stock_checked(offer_id, 1_796_000_000_000_000)
            checked = [f"{offer_id}_{i:03d}" for i in range(198)]
            await store.checked_after_rebuild(checked, 1_796_000_000_000_000)
        found = await store.unchecked_after_rebuild(T0, 100)
        assert len(found) == 10
        assert {o.id[-3:] for o, _ in found} == {"198", "199"}
        [find] = finds
        command = {k: find[k] for k in ("find", "filter", "limit")}
        plan = await db.command("explain", command, verbosity="executionStats")
        stages = str(plan["queryPlanner"]["winningPlan"])
        assert "offer_idempotency_key" not in stages, stages
        assert plan["executionStats"]["totalDocsExamined"] == 10
        await store.close()
    finally:
        await client.drop_database(db.name)
        await client.close()
