"""The MongoDB store for orders, on PyMongo's async API (flash offers: offers.py).

Every write changes one document and nothing else, so no write needs a transaction: the
host's figures are counted from the orders when asked, not kept beside them. Creation is
idempotent through the unique (offer_id, idempotency_key) index rather than a read before the
write: a read can race another process, the index cannot. Orders are written with majority
write concern, so an acknowledged order survives a restart or a failover.

The documents themselves are in order_docs.py.
"""

from __future__ import annotations

import builtins
import copy
import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError
from pymongo.read_concern import ReadConcern

from server.adapters.group_commit import GroupCommit, own_copy
from server.adapters.mongo.offers import ensure_offer_indexes
from server.adapters.mongo.order_docs import order_doc, order_from, transition_doc
from server.adapters.mongo.order_figures import figures_by_offer
from server.adapters.mongo.stores import Document, collection, coming_after, translate_errors
from server.domain.errors import Conflict, NotFound, Unavailable
from server.domain.figures import OfferFigures
from server.domain.offers import NO_BUILD
from server.domain.orders import Order, OrderStatus, check_last_move
from server.domain.pages import PageKey

log = logging.getLogger("liveshop.orders")

ORDERS = "orders"
# Keys whose reservation was given back with no order under them, watched for an order that
# lands later (`watch_key`); MongoDB deletes each once its `until` has passed.
RELEASED_KEYS = "released_keys"
# Offers whose stock a rebuild is reading from their orders, watched for an order that lands
# after the read (`watch_offer`); deleted as the released keys are.
REBUILT_OFFERS = "rebuilt_offers"
# Per offer, the build of its last stock checked after a rebuild (`note_stock_checked`): kept
# for good, unlike the watch, since orders noted held by it keep its build.
CHECKED_BUILDS = "checked_builds"
# The builds of the stocks noted holding the order (`checked_after_rebuild`), and the highest,
# which the rounds' index reads.
HELD_BY = "held_by_builds"
HIGHEST_HELD_BY = "held_by_build"
# Set on an order, with its move to cancelled or expired, until its units are back in the offer.
UNITS_TO_RETURN = "units_to_return"
# Set on an order whose last change could not be sent to its buyer, until it has been.
BUYER_UNTOLD = "buyer_untold"
_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]
DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index violation


async def ensure_order_indexes(db: AsyncDatabase[Any]) -> None:
    """Create every index the offer and order stores rely on; safe to run at each start. The
    unique key index is what makes `MongoOrderStore.create` idempotent, so run this before the
    first order is written."""
    await collection(db, ORDERS).create_indexes(
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
            # A rebuilt offer's pending orders not yet checked are read through this, not by
            # reading every order of the offer once a second (`unchecked_after_rebuild`).
            IndexModel(
                [("offer_id", ASCENDING), (HIGHEST_HELD_BY, ASCENDING)],
                name="pending_held_by_build",
                partialFilterExpression={"status": OrderStatus.PENDING_PAYMENT.value},
            ),
            # Only the few orders whose units are on their way back, or whose buyer is still
            # to be told, are in these.
            *(
                IndexModel([(note, ASCENDING)], name=note, partialFilterExpression={note: True})
                for note in (UNITS_TO_RETURN, BUYER_UNTOLD)
            ),
        ]
    )
    for watches in (RELEASED_KEYS, REBUILT_OFFERS):
        await collection(db, watches).create_index("until", expireAfterSeconds=0, name="until")
    await ensure_offer_indexes(db)


# An order is acknowledged only once a majority of the replica set has it (journaled), so a
# failover cannot roll it back.
ORDER_WRITE_CONCERN = WriteConcern(w="majority")
# A retry is answered with the order its first attempt stored only once the majority has that
# order too: an order on the primary alone may still be rolled back by a failover. So are the
# orders the reaper and the late round find under a key, which they attach and tell the buyer
# of: one they cannot see yet is settled as late once the majority has it (late_orders.py).
ORDER_READBACK_CONCERN = ReadConcern("majority")
# How long a batch of orders may take, all in: finding a primary, the insert, the majority's
# acknowledgement. Without a bound, a lost majority or a frozen primary would hold every claim of
# the offer in its batch queue (a SIGSTOPped mongod held them 40 s). After it, the claimers hear
# "try again", and a retry finds the order if it was written after all.
ORDER_WRITE_SECONDS = 5.0


class MongoOrderStore:
    def __init__(
        self,
        db: AsyncDatabase[Any],
        *,
        write_concern: WriteConcern = ORDER_WRITE_CONCERN,
        write_seconds: float = ORDER_WRITE_SECONDS,
    ) -> None:
        self._orders = collection(db, ORDERS).with_options(write_concern=write_concern)
        self._majority_orders = self._orders.with_options(read_concern=ORDER_READBACK_CONCERN)
        # Majority too: a failover must not forget a key whose units went back.
        self._released_keys = collection(db, RELEASED_KEYS).with_options(
            write_concern=write_concern, read_concern=ORDER_READBACK_CONCERN
        )
        self._rebuilt_offers = collection(db, REBUILT_OFFERS).with_options(
            write_concern=write_concern
        )
        # Majority, as the orders a rebuild reads: a primary deposed meanwhile must not answer
        # an older build than the orders' notes name.
        self._checked_builds = collection(db, CHECKED_BUILDS).with_options(
            write_concern=write_concern, read_concern=ORDER_READBACK_CONCERN
        )
        self._write_seconds = write_seconds
        self._creates = GroupCommit(self._create_batch)

    async def close(self) -> None:
        """Wait for orders being written (before the client closes)."""
        await self._creates.wait_idle()

    async def create(self, order: Order) -> Order:
        # Orders of one offer created together share one insert (see group_commit.py).
        return await self._creates.submit(order.offer_id, order)

    # Translated here, not in `create`: a batch that finds no server (Unavailable) fails the
    # calls queued behind it at once, rather than each waiting out a deadline of its own.
    @translate_errors
    async def _create_batch(self, offer_id: str, orders: list[Order]) -> list[Order | Exception]:
        """Write a batch of new orders with one unordered insert, each document on its own.

        A key already taken (a retried claim racing its first attempt) refuses that document
        alone: the order stored under the key is handed back once the majority has it, and the
        others are written.
        Whatever goes wrong with one caller's order is that caller's answer alone."""
        firsts: dict[str, Order] = {}
        for order in orders:  # a retry in the same batch gets the first order back
            firsts.setdefault(order.idempotency_key, order)
        with pymongo.timeout(self._write_seconds):  # the whole batch, read-back included
            return await self._write_batch(offer_id, orders, firsts)

    async def _write_batch(
        self, offer_id: str, orders: list[Order], firsts: dict[str, Order]
    ) -> list[Order | Exception]:
        answers: dict[str, Order | Exception] = dict(firsts)
        taken: dict[str, Order] = {}
        try:
            await self._orders.insert_many([order_doc(o) for o in firsts.values()], ordered=False)
        except BulkWriteError as error:
            batch = list(firsts.values())
            for refusal in error.details.get("writeErrors", []):
                order = batch[refusal["index"]]
                if refusal.get("code") == DUPLICATE_KEY:
                    taken[order.idempotency_key] = order
                else:
                    log.warning("order_refused", extra={"code": refusal.get("code")})
                    answers[order.idempotency_key] = _try_again("could not be written")
            if error.details.get("writeConcernErrors"):
                # Written, but not known to survive a failover: not to be acknowledged.
                log.warning("order_write_unconfirmed", extra={"offer_id": offer_id})
                for key, answer in answers.items():
                    if answer is firsts[key] and key not in taken:
                        answers[key] = _try_again("may not have been saved")
        if taken:
            answers |= await self._stored_under(offer_id, taken)
        return _answers(orders, answers)

    async def _stored_under(
        self, offer_id: str, taken: dict[str, Order]
    ) -> dict[str, Order | Exception]:
        """For each taken key, the order stored under it as the majority has it: answering a
        retry with an order the majority lacks would acknowledge (201) an order a failover can
        still roll back. A key whose order only this node has yet (its first attempt is still
        being written) hears "try again", and the retry finds the order once committed;
        `order_exists` where no order holds the key (then the clash was on the order's id)."""
        try:
            found = await _held(self._majority_orders, offer_id, taken)
            missing = [key for key in taken if key not in found]
            # Read at `local` (the default) only to tell "not committed yet" from "no order".
            pending = await _held(self._orders, offer_id, missing) if missing else {}
        except PyMongoError:
            # These callers alone go without an answer: the others' orders are written.
            return {key: _try_again("could not be read back") for key in taken}
        answers: dict[str, Order | Exception] = {}
        for key, order in taken.items():
            if key in found:
                answers[key] = order_from(found[key])
            elif key in pending:
                answers[key] = _try_again("is still being written")
            else:
                answers[key] = Conflict(f"order {order.id} exists", code="order_exists")
        return answers

    @translate_errors
    async def get(self, order_id: str) -> Order:
        doc = await self._orders.find_one({"_id": order_id})
        if doc is None:
            raise NotFound(f"order {order_id} not found")
        return order_from(doc)

    @translate_errors
    async def by_key(self, offer_id: str, idempotency_key: str) -> Order | None:
        doc = await self._majority_orders.find_one(
            {"offer_id": offer_id, "idempotency_key": idempotency_key}
        )
        return None if doc is None else order_from(doc)

    @translate_errors
    async def list_for_buyer(
        self, buyer_id: str, limit: int, *, after: PageKey | None = None
    ) -> builtins.list[Order]:
        return await self._newest({"buyer_id": buyer_id}, limit, after)

    @translate_errors
    async def list_for_room(
        self, room_id: str, limit: int, *, after: PageKey | None = None
    ) -> builtins.list[Order]:
        return await self._newest({"room_id": room_id}, limit, after)

    async def _newest(
        self, query: Document, limit: int, after: PageKey | None
    ) -> builtins.list[Order]:
        if after is not None:
            query = {**query, **coming_after(after)}
        cursor = self._orders.find(query).sort(_NEWEST_FIRST).limit(limit)
        return [order_from(doc) async for doc in cursor]

    @translate_errors
    async def save_move(
        self, order: Order, *, expected: OrderStatus, units_to_return: bool = False
    ) -> None:
        check_last_move(order, expected)
        changes: Document = {"status": order.status.value, BUYER_UNTOLD: True}
        if units_to_return:
            changes[UNITS_TO_RETURN] = True
        # Compare-and-set on the status: of two racing moves (a payment and an expiry), one
        # matches; the other finds the status changed and is refused.
        result = await self._orders.update_one(
            {"_id": order.id, "status": expected.value},
            {"$set": changes, "$push": {"history": transition_doc(order.history[-1])}},
        )
        if result.matched_count:
            return
        current = await self._orders.find_one({"_id": order.id}, {"status": True})
        if current is None:
            raise NotFound(f"order {order.id} not found")
        raise Conflict(
            f"the order is {current['status']} now, not {expected}", code="order_changed"
        )

    @translate_errors
    async def units_to_return(self, limit: int) -> builtins.list[Order]:
        cursor = self._orders.find({UNITS_TO_RETURN: True}).limit(limit)
        return [order_from(doc) async for doc in cursor]

    @translate_errors
    async def units_returned(self, order_id: str) -> None:
        await self._orders.update_one({"_id": order_id}, {"$unset": {UNITS_TO_RETURN: ""}})

    @translate_errors
    async def note_buyer_untold(self, order_id: str) -> None:
        await self._orders.update_one({"_id": order_id}, {"$set": {BUYER_UNTOLD: True}})

    @translate_errors
    async def buyers_untold(
        self, changed_before: datetime, limit: int, *, skip: Collection[str] = ()
    ) -> builtins.list[Order]:
        last_change = {"$arrayElemAt": ["$history.at", -1]}
        query: dict[str, Any] = {
            BUYER_UNTOLD: True,
            "$expr": {"$lt": [last_change, changed_before]},
        }
        if skip:
            query["_id"] = {"$nin": list(skip)}
        cursor = self._orders.find(query).limit(limit)
        return [order_from(doc) async for doc in cursor]

    @translate_errors
    async def buyer_told(self, order_id: str, moves: int) -> None:
        await self._orders.update_one(
            {"_id": order_id, "history": {"$size": moves}}, {"$unset": {BUYER_UNTOLD: ""}}
        )

    @translate_errors
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

    @translate_errors
    async def of_offer(self, offer_id: str) -> builtins.list[Order]:
        # What the majority has: a rebuild must not count an order a failover then rolls back
        # (its key would name an order that does not exist, its units held for good).
        cursor = self._majority_orders.find({"offer_id": offer_id}).sort(
            [("created_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [order_from(doc) async for doc in cursor]

    @translate_errors
    async def count_of_offer(self, offer_id: str) -> int:
        return await self._majority_orders.count_documents({"offer_id": offer_id})

    @translate_errors
    async def figures_of_offers(self, offer_ids: Sequence[str]) -> builtins.list[OfferFigures]:
        # One aggregation for them all, through the offer_id prefix of the idempotency key index.
        found = await figures_by_offer(self._orders, {"offer_id": {"$in": list(offer_ids)}})
        return [found.get(offer_id) or OfferFigures(offer_id) for offer_id in offer_ids]

    @translate_errors
    async def figures_in_room(self, room_id: str) -> builtins.list[OfferFigures]:
        # Through the room_created_at index.
        return list((await figures_by_offer(self._orders, {"room_id": room_id})).values())

    @translate_errors
    async def watch_key(self, offer_id: str, idempotency_key: str, until: datetime) -> None:
        await self._released_keys.update_one(
            {"_id": _key_id(offer_id, idempotency_key)}, {"$max": {"until": until}}, upsert=True
        )

    @translate_errors
    async def landed_late(self, now: datetime, keys: int) -> builtins.list[Order]:
        # One look-up in the key index for each key: tens of µs of mongod's time each, so a
        # call looks under at most `keys` of them, a new sample each time (after a $match,
        # $sample sorts at random: no key twice).
        under_key = {
            "$and": [
                {"$eq": ["$offer_id", "$$offer_id"]},
                {"$eq": ["$idempotency_key", "$$key"]},
            ]
        }
        cursor = await self._released_keys.aggregate(
            [
                {"$match": {"until": {"$gt": now}}},
                {"$sample": {"size": keys}},
                {
                    "$lookup": {
                        "from": ORDERS,
                        "let": {"offer_id": "$_id.offer_id", "key": "$_id.key"},
                        "pipeline": [{"$match": {"$expr": under_key}}],
                        "as": "orders",
                    }
                },
                {"$unwind": "$orders"},
                {"$replaceWith": "$orders"},
            ]
        )
        return [order_from(doc) async for doc in cursor]

    @translate_errors
    async def unwatch_key(self, offer_id: str, idempotency_key: str) -> None:
        await self._released_keys.delete_one({"_id": _key_id(offer_id, idempotency_key)})

    @translate_errors
    async def watched_keys(self, offer_id: str, now: datetime) -> builtins.set[str]:
        # Read only by a rebuild (Redis lost the offer), over notes kept 15 minutes: a scan of
        # them costs less than an index every note would pay for.
        query = {"_id.offer_id": offer_id, "until": {"$gt": now}}
        return {doc["_id"]["key"] async for doc in self._released_keys.find(query, {"_id": 1})}

    @translate_errors
    async def watch_offer(self, offer_id: str, until: datetime) -> None:
        await self._rebuilt_offers.update_one(
            {"_id": offer_id}, {"$max": {"until": until}}, upsert=True
        )

    @translate_errors
    async def last_stock_checked(self, offer_id: str) -> int | None:
        doc = await self._checked_builds.find_one({"_id": offer_id})
        return None if doc is None else int(doc["build"])

    @translate_errors
    async def note_stock_checked(self, offer_id: str, build: int) -> int:
        doc = await self._checked_builds.find_one_and_update(
            {"_id": offer_id},
            {"$max": {"build": build}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return build if doc is None else int(doc["build"])  # upserted: never None

    @translate_errors
    async def checked_of_offer(self, offer_id: str) -> dict[str, frozenset[int]]:
        query = {"offer_id": offer_id, HELD_BY: {"$exists": True}}
        found = self._majority_orders.find(query, {HELD_BY: True})
        return {doc["_id"]: frozenset(doc[HELD_BY]) async for doc in found}

    @translate_errors
    async def unchecked_after_rebuild(
        self, now: datetime, limit: int
    ) -> builtins.list[tuple[Order, int]]:
        watched = self._rebuilt_offers.find({"until": {"$gt": now}}, {"_id": True})
        builds = dict.fromkeys([doc["_id"] async for doc in watched], NO_BUILD)
        if not builds:  # nearly always: a watch follows a loss of Redis's data
            return []
        async for doc in self._checked_builds.find({"_id": {"$in": list(builds)}}):
            builds[doc["_id"]] = doc["build"]
        # Per offer, its pending orders not noted held by its last stock checked; the status
        # in each branch, or the planner serves the branches from an index of every order.
        pending = OrderStatus.PENDING_PAYMENT.value
        query = {
            "$or": [
                {"offer_id": offer_id, "status": pending, HIGHEST_HELD_BY: {"$ne": build}}
                for offer_id, build in builds.items()
            ]
        }
        found = self._orders.find(query).limit(limit)
        return [(order_from(doc), builds[doc["offer_id"]]) async for doc in found]

    @translate_errors
    async def checked_after_rebuild(self, order_ids: Sequence[str], build: int) -> None:
        if order_ids:
            await self._orders.update_many(
                {"_id": {"$in": list(order_ids)}},
                {"$max": {HIGHEST_HELD_BY: build}, "$addToSet": {HELD_BY: build}},
            )


async def _held(
    orders: AsyncCollection[Document], offer_id: str, keys: Collection[str]
) -> dict[str, Document]:
    """The orders stored under these keys of the offer, by key, read at `orders`' concern."""
    query = {"offer_id": offer_id, "idempotency_key": {"$in": list(keys)}}
    return {doc["idempotency_key"]: doc async for doc in orders.find(query)}


def _key_id(offer_id: str, idempotency_key: str) -> Document:
    return {"offer_id": offer_id, "key": idempotency_key}


def _answers(orders: list[Order], by_key: dict[str, Order | Exception]) -> list[Order | Exception]:
    """Each caller's answer by key. Callers with the same key get their own copy of the order
    or the error: they must not share an object they may go on to change (or raise)."""
    answers: list[Order | Exception] = []
    handed_out: set[int] = set()
    for order in orders:
        answer = by_key[order.idempotency_key]
        if id(answer) in handed_out:
            answer = own_copy(answer) if isinstance(answer, Exception) else copy.deepcopy(answer)
        handed_out.add(id(answer))
        answers.append(answer)
    return answers


def _try_again(what: str) -> Unavailable:
    return Unavailable(f"the order {what}, try again", code="order_write_failed")
