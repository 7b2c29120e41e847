"""MongoDB stores for flash offers and orders, on PyMongo's async API.

An order and its offer's figures change together in one multi-document transaction, so the
host's figures never disagree with the orders (needs a replica set; a single node is enough).
Creation is idempotent through the unique (offer_id, idempotency_key) index rather than a read
before the write: a read can race another process, the index cannot.

The offer's figures are counters spread over shards (see FIGURE_SHARDS); the documents
themselves are in order_docs.py.
"""

from __future__ import annotations

import asyncio
import builtins
import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from bson import Decimal128
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from server.adapters.group_commit import GroupCommit
from server.adapters.memory_orders import FiguresDelta, check_last_move
from server.adapters.mongo.order_docs import (
    offer_doc,
    offer_from,
    order_doc,
    order_from,
    transition_doc,
)
from server.adapters.mongo.stores import Document, _collection, _money_from, _translate_errors
from server.domain.errors import Conflict, NotFound, Unavailable
from server.domain.offers import EndReason, FlashOffer, utc_ms
from server.domain.orders import Order, OrderStatus
from server.ports import OfferFigures

OFFERS = "offers"
ORDERS = "orders"
OFFER_FIGURES = "offer_figures"

T = TypeVar("T")

_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]
# An offer's figures are spread over this many counter documents, summed when read. One
# document would be a hot spot: every order of a flash sale writes it, and transactions writing
# one document at once conflict and retry with backoff (about 20 orders/s with 500 concurrent
# creates on one local mongod, where plain inserts run at about 1,000/s).
FIGURE_SHARDS = 64
DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index violation


async def ensure_order_indexes(db: AsyncDatabase[Any]) -> None:
    """Create every index the offer and order stores rely on; safe to run at each start. The
    unique key index is what makes `MongoOrderStore.create` idempotent, so run this before the
    first order is written."""
    await _collection(db, ORDERS).create_indexes(
        [
            IndexModel(
                [("offer_id", ASCENDING), ("idempotency_key", ASCENDING)],
                unique=True,
                name="offer_idempotency_key",
            ),
            IndexModel([("buyer_id", ASCENDING), *_NEWEST_FIRST], name="buyer_created_at"),
            IndexModel([("room_id", ASCENDING), *_NEWEST_FIRST], name="room_created_at"),
            IndexModel(
                [("status", ASCENDING), ("reservation_expires_at", ASCENDING)],
                name="status_expires_at",
            ),
        ]
    )
    await _collection(db, OFFERS).create_indexes(
        [
            IndexModel(
                [("room_id", ASCENDING), ("ended_at", ASCENDING), ("starts_at", ASCENDING)],
                name="room_open",
            ),
            IndexModel([("ended_at", ASCENDING), ("ends_at", ASCENDING)], name="due_to_end"),
        ]
    )
    # Also creates the collection: the first transactions on a new offer would otherwise race
    # to create it.
    await _collection(db, OFFER_FIGURES).create_index("offer_id", name="offer_id")


class MongoOfferStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._offers = _collection(db, OFFERS)

    @_translate_errors
    async def create(self, offer: FlashOffer) -> None:
        try:
            await self._offers.insert_one(offer_doc(offer))
        except DuplicateKeyError:
            raise Conflict(f"offer {offer.id} exists") from None

    @_translate_errors
    async def get(self, offer_id: str) -> FlashOffer:
        doc = await self._offers.find_one({"_id": offer_id})
        if doc is None:
            raise NotFound(f"offer {offer_id} not found")
        return offer_from(doc)

    @_translate_errors
    async def open_in_room(self, room_id: str) -> builtins.list[FlashOffer]:
        cursor = self._offers.find({"room_id": room_id, "ended_at": None}).sort(
            [("starts_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [offer_from(doc) async for doc in cursor]

    @_translate_errors
    async def in_room(self, room_id: str, limit: int) -> builtins.list[FlashOffer]:
        cursor = self._offers.find({"room_id": room_id}).sort(
            [("starts_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [offer_from(doc) async for doc in cursor.limit(limit)]

    @_translate_errors
    async def record_end(self, offer_id: str, reason: EndReason, at: datetime) -> FlashOffer | None:
        # One conditional update: of any number of processes ending the offer at once, the
        # server lets exactly one match `ended_at: null`.
        doc = await self._offers.find_one_and_update(
            {"_id": offer_id, "ended_at": None},
            {"$set": {"ended_at": utc_ms(at), "end_reason": reason.value}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            return offer_from(doc)
        await self.get(offer_id)  # NotFound for an unknown offer rather than "already ended"
        return None

    @_translate_errors
    async def due_to_end(self, now: datetime, limit: int) -> builtins.list[FlashOffer]:
        cursor = (
            self._offers.find({"ended_at": None, "ends_at": {"$lte": now}})
            .sort([("ends_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [offer_from(doc) async for doc in cursor]


class MongoOrderStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._client = db.client
        self._orders = _collection(db, ORDERS)
        self._figures = _collection(db, OFFER_FIGURES)
        # Shuffled, so processes sharing the database start on different shards.
        self._free_shards: asyncio.Queue[int] = asyncio.Queue()
        for shard in random.sample(range(FIGURE_SHARDS), FIGURE_SHARDS):
            self._free_shards.put_nowait(shard)
        self._creates = GroupCommit(self._create_batch)

    async def close(self) -> None:
        """Wait for orders being written (before the client closes)."""
        await self._creates.wait_idle()

    @_translate_errors
    async def create(self, order: Order) -> Order:
        # Orders of one offer created together share one transaction (see group_commit.py).
        return await self._creates.submit(order.offer_id, order)

    async def _create_batch(self, offer_id: str, orders: list[Order]) -> list[Order | Exception]:
        """Write a batch of new orders and their figures in one transaction.

        A key already taken (a retried claim racing its first attempt) makes the transaction
        write nothing: the orders already stored are looked up, and the rest written again.
        Should that fail too (an order id taken), each order is created on its own."""
        stored: dict[str, Order | Exception] = {}
        fresh: dict[str, Order] = {}
        for order in orders:  # a retry in the same batch gets the first order back
            fresh.setdefault(order.idempotency_key, order)
        for _ in range(2):
            try:
                stored |= await self._insert_together(offer_id, list(fresh.values()))
                return _answers(orders, stored)
            except (DuplicateKeyError, BulkWriteError) as error:
                if not _only_duplicate_keys(error):
                    if isinstance(error, BulkWriteError):
                        break  # a document of its own refused: the others still go in
                    raise
            query = {"offer_id": offer_id, "idempotency_key": {"$in": list(fresh)}}
            async for doc in self._orders.find(query):
                stored[doc["idempotency_key"]] = order_from(doc)
                del fresh[doc["idempotency_key"]]
        written = await _each(self._create_one(order) for order in fresh.values())
        stored |= zip(fresh, written, strict=True)
        return _answers(orders, stored)

    async def _insert_together(self, offer_id: str, orders: list[Order]) -> dict[str, Order]:
        """Insert the orders and count them in the figures, all or nothing; by key."""
        if not orders:
            return {}
        docs = [order_doc(order) for order in orders]
        deltas = [FiguresDelta.of(o.quantity, o.total, None, o.status) for o in orders]

        async def write(session: AsyncClientSession, shard: int) -> None:
            await self._orders.insert_many(docs, session=session)
            # Last in the transaction: a concurrent writer of the same counter conflicts only
            # while it is held, from here to the commit.
            await self._apply(offer_id, deltas, session, shard)

        await self._transaction(write)
        return {order.idempotency_key: order for order in orders}

    async def _create_one(self, order: Order) -> Order:
        key = {"offer_id": order.offer_id, "idempotency_key": order.idempotency_key}
        for _ in range(3):
            try:
                await self._insert_together(order.offer_id, [order])
                return order
            except (DuplicateKeyError, BulkWriteError) as error:
                if not _only_duplicate_keys(error):
                    raise
                stored = await self._orders.find_one(key)
                if stored is not None:  # a retried claim: the first order stands
                    return order_from(stored)
                if await self._orders.count_documents({"_id": order.id}, limit=1):
                    raise Conflict(f"order {order.id} exists", code="order_exists") from None
                # Neither the key nor the id is taken, so the clash was elsewhere (a figures
                # counter created at the same moment by another process): write again.
        raise Unavailable("the order could not be written, try again", code="order_write_failed")

    @_translate_errors
    async def get(self, order_id: str) -> Order:
        doc = await self._orders.find_one({"_id": order_id})
        if doc is None:
            raise NotFound(f"order {order_id} not found")
        return order_from(doc)

    @_translate_errors
    async def by_key(self, offer_id: str, idempotency_key: str) -> Order | None:
        doc = await self._orders.find_one(
            {"offer_id": offer_id, "idempotency_key": idempotency_key}
        )
        return None if doc is None else order_from(doc)

    @_translate_errors
    async def list_for_buyer(self, buyer_id: str, limit: int) -> builtins.list[Order]:
        cursor = self._orders.find({"buyer_id": buyer_id}).sort(_NEWEST_FIRST).limit(limit)
        return [order_from(doc) async for doc in cursor]

    @_translate_errors
    async def list_for_room(self, room_id: str, limit: int) -> builtins.list[Order]:
        cursor = self._orders.find({"room_id": room_id}).sort(_NEWEST_FIRST).limit(limit)
        return [order_from(doc) async for doc in cursor]

    @_translate_errors
    async def save_move(self, order: Order, *, expected: OrderStatus) -> None:
        check_last_move(order, expected)
        step = transition_doc(order.history[-1])

        async def write(session: AsyncClientSession, shard: int) -> None:
            # Compare-and-set on the status: of two racing moves (a payment and an expiry),
            # one matches; the other finds the status changed and is refused.
            stored = await self._orders.find_one_and_update(
                {"_id": order.id, "status": expected.value},
                {"$set": {"status": order.status.value}, "$push": {"history": step}},
                projection={"offer_id": True, "quantity": True, "total": True},
                session=session,
            )
            if stored is None:
                current = await self._orders.find_one(
                    {"_id": order.id}, {"status": True}, session=session
                )
                if current is None:
                    raise NotFound(f"order {order.id} not found")
                raise Conflict(
                    f"the order is {current['status']} now, not {expected}", code="order_changed"
                )
            # Figures from the stored order, not the caller's copy of it.
            delta = FiguresDelta.of(
                stored["quantity"], _money_from(stored["total"]), expected, order.status
            )
            await self._apply(stored["offer_id"], [delta], session, shard)

        await self._transaction(write)

    @_translate_errors
    async def due_to_expire(self, now: datetime, limit: int) -> builtins.list[Order]:
        query = {
            "status": OrderStatus.PENDING_PAYMENT.value,
            "reservation_expires_at": {"$lte": now},
        }
        cursor = (
            self._orders.find(query)
            .sort([("reservation_expires_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [order_from(doc) async for doc in cursor]

    @_translate_errors
    async def of_offer(self, offer_id: str) -> builtins.list[Order]:
        cursor = self._orders.find({"offer_id": offer_id}).sort(
            [("created_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [order_from(doc) async for doc in cursor]

    @_translate_errors
    async def offer_figures(self, offer_id: str) -> OfferFigures:
        # Each transaction wrote one shard, so no write is ever half counted in the sum.
        counts = dict.fromkeys(("orders", "units", "paid_orders", "paid_units"), 0)
        gmv: dict[str, Decimal] = {}
        async for doc in self._figures.find({"offer_id": offer_id}):
            for name in counts:
                counts[name] += doc.get(name, 0)
            for code, amount in doc.get("gmv", {}).items():
                gmv[code] = gmv.get(code, Decimal(0)) + amount.to_decimal()
        return OfferFigures(offer_id, gmv=gmv, **counts)

    async def _transaction(self, write: Callable[[AsyncClientSession, int], Awaitable[T]]) -> T:
        """Run `write` in a transaction with a figures shard no other transaction of this
        process holds meanwhile, so this process's orders never conflict with each other.

        with_transaction retries the whole callback on transient errors (a conflict with
        another process on the same shard) and the commit when its outcome is unknown, so the
        callback must be safe to run again: it only writes."""
        # Past FIGURE_SHARDS concurrent writes the next one waits for a shard rather than
        # share one: waiting costs less than a conflict, an abort and a backoff.
        shard = await self._free_shards.get()
        try:
            async with self._client.start_session() as session:
                return await session.with_transaction(lambda s: write(s, shard))
        finally:
            self._free_shards.put_nowait(shard)

    async def _apply(
        self,
        offer_id: str,
        deltas: Iterable[FiguresDelta],
        session: AsyncClientSession,
        shard: int,
    ) -> None:
        inc: Document = {}
        gmv: dict[str, Decimal] = {}
        for delta in deltas:
            if delta.is_zero:
                continue
            for name in ("orders", "units", "paid_orders", "paid_units"):
                inc[name] = inc.get(name, 0) + getattr(delta, name)
            if delta.paid_orders:
                gmv[delta.currency] = gmv.get(delta.currency, Decimal(0)) + delta.gmv
        if not inc:
            return
        for code, amount in gmv.items():
            # Decimal128 adds exactly; currency codes are three capitals, safe as field names.
            inc[f"gmv.{code}"] = Decimal128(amount)
        await self._figures.update_one(
            {"_id": f"{offer_id}#{shard}"},
            {"$inc": inc, "$setOnInsert": {"offer_id": offer_id}},
            upsert=True,
            session=session,
        )


def _answers(orders: list[Order], stored: dict[str, Order | Exception]) -> list[Order | Exception]:
    """Each caller's answer by key. A caller whose key another order took gets its own copy of
    that order: callers must not share one object they may go on to change."""
    answers: list[Order | Exception] = []
    handed_out: set[int] = set()
    for order in orders:
        answer = stored[order.idempotency_key]
        if isinstance(answer, Order):
            if id(answer) in handed_out:
                answer = order_from(order_doc(answer))
            handed_out.add(id(answer))
        answers.append(answer)
    return answers


async def _each(writes: Iterable[Awaitable[T]]) -> list[T | Exception]:
    """Run the writes side by side; each one's result or error."""
    outcomes: list[T | Exception] = []
    for result in await asyncio.gather(*writes, return_exceptions=True):
        if isinstance(result, Exception) or not isinstance(result, BaseException):
            outcomes.append(result)
        else:
            raise result  # cancelled: stop
    return outcomes


def _only_duplicate_keys(error: DuplicateKeyError | BulkWriteError) -> bool:
    """Whether the write failed only because a unique key was taken (code 11000)."""
    if isinstance(error, DuplicateKeyError):
        return True
    details = error.details.get("writeErrors", [])
    return bool(details) and all(e.get("code") == DUPLICATE_KEY for e in details)
