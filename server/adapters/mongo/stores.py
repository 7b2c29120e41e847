"""MongoDB stores for products and rooms, on PyMongo's async API.

Money is kept as Decimal128 plus a currency code, never a float. Datetimes come back UTC and
tz-aware through the codec options. Network failures and timeouts surface as Unavailable (503),
duplicate ids as Conflict, so nothing above this module sees a PyMongo exception.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from bson import CodecOptions, Decimal128
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from server.adapters.group_commit import GroupCommit
from server.adapters.unreachable import unavailable_when
from server.domain.errors import Conflict, NotFound, ProductOffersChanged
from server.domain.money import Money
from server.domain.pages import PageKey
from server.domain.products import Product
from server.domain.rooms import (
    MAX_LIVE_ROOMS_PER_HOST,
    MAX_MUTES,
    Room,
    RoomStatus,
    room_has_ended,
    too_many_live_rooms,
    too_many_mutes,
)

PRODUCTS = "products"
ROOMS = "rooms"
ROOM_BANS = "room_bans"
# On a product: how many offers were launched against its stock figure (Product.launches).
LAUNCHES = "launches"

Document = dict[str, Any]
_CODEC: CodecOptions[Document] = CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC)

# What `save` writes. The pinned product, slow mode and blocked words have their own setters
# and are left out, so a lifecycle change (start, end) made from a room read earlier cannot
# undo a pin or a settings change made meanwhile; mutes live in the same document and are
# never part of a save either.
_LIFECYCLE_FIELDS = ("title", "status", "scheduled_at", "started_at", "ended_at", "end_untold")
LIVE_PLACE = "live_place"  # which of its host's MAX_LIVE_ROOMS_PER_HOST a live room holds


# What a server answers while it shuts down, steps down or is cut off from its set: the
# operation may be sent again once a primary answers (the codes MongoDB's drivers retry on).
_NOT_NOW_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        134,  # ReadConcernMajorityNotAvailableYet
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10058,  # LegacyNotPrimary
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)


def _unreachable(exc: Exception) -> bool:
    # ConnectionFailure: down, failing over, no primary. A timeout: the operation ran past the
    # client's deadline (timeoutMS), as against a frozen or partitioned server. A server going
    # down cleanly or stepping down answers with an error of its own (often a write concern
    # error on a write it took: ShutdownInProgress), which PyMongo retries once and then
    # raises as it is.
    if isinstance(exc, ConnectionFailure):
        return True
    if not isinstance(exc, PyMongoError):
        return False
    if exc.timeout or exc.has_error_label("RetryableWriteError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _NOT_NOW_CODES


translate_errors = unavailable_when(
    _unreachable,
    "the database is unreachable",
    timed_out=lambda exc: isinstance(exc, PyMongoError) and exc.timeout,
)


def collection(db: AsyncDatabase[Any], name: str) -> AsyncCollection[Document]:
    return db.with_options(codec_options=_CODEC)[name]


async def ensure_indexes(db: AsyncDatabase[Any]) -> None:
    """Create every index these stores query by; safe to run at each start."""
    await collection(db, ROOMS).create_indexes(
        [
            IndexModel(
                [("status", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
                name="status_created_at",
            ),
            IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="created_at"),
            # Each live room holds one of its host's places (MongoRoomStore.save).
            IndexModel(
                [("host_id", ASCENDING), (LIVE_PLACE, ASCENDING)],
                name="live_places",
                unique=True,
                partialFilterExpression={LIVE_PLACE: {"$exists": True}},
            ),
            # Every process asks each second; only the few ends not yet told are in it.
            IndexModel(
                [("ended_at", ASCENDING)],
                name="untold_ends",
                partialFilterExpression={"end_untold": True},
            ),
        ]
    )
    await collection(db, ROOM_BANS).create_index(
        [("room_id", ASCENDING), ("user_id", ASCENDING)], unique=True, name="room_user"
    )


class MongoProductStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._products = collection(db, PRODUCTS)

    @translate_errors
    async def create(self, product: Product) -> None:
        try:
            await self._products.insert_one(_product_doc(product))
        except DuplicateKeyError:
            raise Conflict(f"product {product.id} exists") from None

    @translate_errors
    async def get(self, product_id: str) -> Product:
        doc = await self._products.find_one({"_id": product_id})
        if doc is None:
            raise NotFound(f"product {product_id} not found")
        return _product_from(doc)

    @translate_errors
    async def set_stock(self, product_id: str, stock: int, *, launches: int) -> Product:
        # Products stored before launches were counted have no count: they match 0.
        counted: Any = {"$in": [0, None]} if launches == 0 else launches
        doc = await self._products.find_one_and_update(
            {"_id": product_id, LAUNCHES: counted},
            {"$set": {"stock": stock}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            return _product_from(doc)
        await self.get(product_id)  # NotFound for an unknown product
        raise ProductOffersChanged("an offer of this product was launched meanwhile")

    @translate_errors
    async def count_launch(self, product_id: str, *, at_least: int) -> bool:
        result = await self._products.update_one(
            {"_id": product_id, "stock": {"$gte": at_least}}, {"$inc": {LAUNCHES: 1}}
        )
        return result.matched_count == 1


class MongoRoomStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._db = db
        self._rooms = collection(db, ROOMS)
        self._bans = collection(db, ROOM_BANS)
        self._ban_checks: GroupCommit[str, str, bool] = GroupCommit(self._banned_among)

    @translate_errors
    async def create(self, room: Room) -> None:
        try:
            await self._rooms.insert_one({**_room_doc(room), "mutes": []})
        except DuplicateKeyError:
            raise Conflict(f"room {room.id} exists") from None

    @translate_errors
    async def get(self, room_id: str) -> Room:
        doc = await self._rooms.find_one({"_id": room_id}, {"mutes": False})
        if doc is None:
            raise NotFound(f"room {room_id} not found")
        return _room_from(doc)

    # Annotations in this class say `builtins.list`: here a bare `list` names this method.
    @translate_errors
    async def list(
        self, *, status: RoomStatus | None, limit: int, after: PageKey | None = None
    ) -> builtins.list[Room]:
        query: Document = {} if status is None else {"status": status.value}
        if after is not None:
            query.update(coming_after(after))
        cursor = (
            self._rooms.find(query, {"mutes": False})
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        return [_room_from(doc) async for doc in cursor]

    @translate_errors
    async def save(self, room: Room, *, expected_status: RoomStatus) -> None:
        doc = _room_doc(room)
        lifecycle = {name: doc[name] for name in _LIFECYCLE_FIELDS}
        if room.status is not RoomStatus.LIVE:  # its place, if it had one, is free again
            update = {"$set": lifecycle, "$unset": {LIVE_PLACE: ""}}
            await self._save_lifecycle(room.id, expected_status, update)
            return
        # Going live takes the first free of its host's places: a unique index on (host,
        # place) makes the count exact however many of the host's rooms start at once.
        for place in range(MAX_LIVE_ROOMS_PER_HOST):
            with contextlib.suppress(DuplicateKeyError):
                update = {"$set": {**lifecycle, LIVE_PLACE: place}}
                await self._save_lifecycle(room.id, expected_status, update)
                return
        raise too_many_live_rooms()

    async def _save_lifecycle(
        self, room_id: str, expected_status: RoomStatus, update: Document
    ) -> None:
        result = await self._rooms.update_one(
            {"_id": room_id, "status": expected_status.value}, update
        )
        if result.matched_count == 0:
            await self._ensure_exists(room_id)
            raise Conflict("room changed meanwhile", code="invalid_room_state")

    @translate_errors
    async def pin(self, room_id: str, product_id: str) -> int:
        doc = await self._rooms.find_one_and_update(
            {"_id": room_id, "status": {"$ne": RoomStatus.ENDED.value}},
            {"$set": {"pinned_product_id": product_id}, "$inc": {"pins": 1}},
            projection={"pins": True},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            await self._ensure_exists(room_id)
            raise room_has_ended()
        return int(doc["pins"])

    @translate_errors
    async def untold_ends(
        self, ended_by: datetime, limit: int, *, skip: Collection[str] = ()
    ) -> builtins.list[str]:
        query: Document = {"end_untold": True, "ended_at": {"$lte": ended_by}}
        if skip:
            query["_id"] = {"$nin": list(skip)}
        cursor = self._rooms.find(query, {"_id": True}).limit(limit)
        return [doc["_id"] async for doc in cursor]

    @translate_errors
    async def end_told(self, room_id: str) -> None:
        await self._rooms.update_one({"_id": room_id}, {"$set": {"end_untold": False}})

    @translate_errors
    async def set_slow_mode(self, room_id: str, seconds: int) -> None:
        await self._set(room_id, {"slow_mode_seconds": seconds})

    @translate_errors
    async def keep_counters(self, room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        doc = await self._rooms.find_one_and_update(
            {"_id": room_id},
            {"$max": {"likes": likes, "peak_viewers": peak_viewers}},
            projection={"likes": True, "peak_viewers": True},
            return_document=ReturnDocument.AFTER,
        )
        return (0, 0) if doc is None else (doc["likes"], doc["peak_viewers"])

    @translate_errors
    async def set_blocked_words(self, room_id: str, words: builtins.list[str]) -> None:
        await self._set(room_id, {"blocked_words": list(words)})

    @translate_errors
    async def ban(self, room_id: str, user_id: str, *, by: str, at: datetime) -> None:
        # Banning twice keeps the first ban's author and time.
        try:
            await self._bans.update_one(
                {"room_id": room_id, "user_id": user_id},
                {"$setOnInsert": {"by": by, "at": at}},
                upsert=True,
            )
        except DuplicateKeyError:
            return  # a concurrent ban of the same user won the insert

    @translate_errors
    async def unban(self, room_id: str, user_id: str) -> bool:
        result = await self._bans.delete_one({"room_id": room_id, "user_id": user_id})
        return result.deleted_count == 1

    async def is_banned(self, room_id: str, user_id: str) -> bool:
        # Every join asks. When a room's viewers all come back at once (its stream was reset,
        # a famous host went live), the joins asking together share one read (group_commit.py),
        # sent after each of them asked: a ban made before a join still refuses it.
        return await self._ban_checks.submit(room_id, user_id)

    # Translated here: a batch that finds no server (Unavailable) fails the joins queued
    # behind it at once, rather than each waiting out a deadline of its own.
    @translate_errors
    async def _banned_among(self, room_id: str, users: builtins.list[str]) -> builtins.list[bool]:
        query = {"room_id": room_id, "user_id": {"$in": users}}
        cursor = self._bans.find(query, {"_id": False, "user_id": True})
        banned = {doc["user_id"] async for doc in cursor}
        return [user in banned for user in users]

    @translate_errors
    async def banned_users(self, room_id: str) -> frozenset[str]:
        cursor = self._bans.find({"room_id": room_id}, {"_id": False, "user_id": True})
        return frozenset([str(doc["user_id"]) async for doc in cursor])

    @translate_errors
    async def mute(self, room_id: str, user_id: str, *, until: datetime, at: datetime) -> None:
        # One pipeline update replaces the user's entry and drops the mutes that are over,
        # atomically, if fewer than MAX_MUTES others run. User ids are wrapped in $literal: one
        # starting with "$" would otherwise be read as a field path.
        user = {"$literal": user_id}
        others = {
            "$filter": {
                "input": {"$ifNull": ["$mutes", []]},
                "cond": {
                    "$and": [{"$ne": ["$$this.user_id", user]}, {"$gt": ["$$this.until", at]}]
                },
            }
        }
        entry = {"user_id": user, "until": until}
        result = await self._rooms.update_one(
            {"_id": room_id, "$expr": {"$lt": [{"$size": others}, MAX_MUTES]}},
            [{"$set": {"mutes": {"$concatArrays": [others, [entry]]}}}],
        )
        if result.matched_count == 0:
            await self._ensure_exists(room_id)
            raise too_many_mutes()

    @translate_errors
    async def unmute(self, room_id: str, user_id: str, *, at: datetime) -> bool:
        # A query's value is a literal: a user id starting with "$" is no field path here. The
        # entry comes back as it was, to tell a running mute from one over already.
        before = await self._rooms.find_one_and_update(
            {"_id": room_id},
            {"$pull": {"mutes": {"user_id": user_id}}},
            projection={"_id": False, "mutes": {"$elemMatch": {"user_id": user_id}}},
        )
        if before is None:
            raise NotFound(f"room {room_id} not found")
        return any(entry["until"] > at for entry in before.get("mutes", []))

    @translate_errors
    async def mutes(self, room_id: str) -> Mapping[str, datetime]:
        doc = await self._rooms.find_one({"_id": room_id}, {"mutes": True})
        if doc is None:
            return {}
        return {entry["user_id"]: entry["until"] for entry in doc.get("mutes", [])}

    @translate_errors
    async def ping(self) -> None:
        await self._db.command("ping")

    async def _set(self, room_id: str, fields: Document) -> None:
        result = await self._rooms.update_one({"_id": room_id}, {"$set": fields})
        if result.matched_count == 0:
            raise NotFound(f"room {room_id} not found")

    async def _ensure_exists(self, room_id: str) -> None:
        if await self._rooms.count_documents({"_id": room_id}, limit=1) == 0:
            raise NotFound(f"room {room_id} not found")


def money_doc(money: Money) -> Document:
    return {"amount": Decimal128(money.amount), "currency": money.currency}


def money_from(doc: Document) -> Money:
    return Money(doc["amount"].to_decimal(), doc["currency"])


def coming_after(after: PageKey) -> Document:
    """What comes after `after` in a list sorted newest first (the rule of pages.comes_after).
    Each branch is one range of a (scope, created_at, _id) index, merged in sort order: no sort
    in memory, no key before the cursor's read."""
    at = after.created_at
    return {"$or": [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": after.item_id}}]}


def _product_doc(product: Product) -> Document:
    return {
        "_id": product.id,
        "owner_id": product.owner_id,
        "title": product.title,
        "price": money_doc(product.price),
        "stock": product.stock,
        "created_at": product.created_at,
        "images": list(product.images),
        "description": product.description,
        "sku": product.sku,
        "origin_country": product.origin_country,
        "hs_code": product.hs_code,
        "weight_grams": product.weight_grams,
        "other_prices": [money_doc(price) for price in product.other_prices],
        LAUNCHES: product.launches,
    }


def _product_from(doc: Document) -> Product:
    # Products written before the trade fields existed read back with their defaults.
    return Product(
        id=doc["_id"],
        owner_id=doc["owner_id"],
        title=doc["title"],
        price=money_from(doc["price"]),
        stock=doc["stock"],
        created_at=doc["created_at"],
        images=list(doc.get("images", [])),
        description=doc.get("description", ""),
        sku=doc.get("sku"),
        origin_country=doc.get("origin_country"),
        hs_code=doc.get("hs_code"),
        weight_grams=doc.get("weight_grams"),
        other_prices=[money_from(price) for price in doc.get("other_prices", [])],
        launches=doc.get(LAUNCHES, 0),
    )


def _room_doc(room: Room) -> Document:
    return {
        "_id": room.id,
        "host_id": room.host_id,
        "title": room.title,
        "status": room.status.value,
        "created_at": room.created_at,
        "scheduled_at": room.scheduled_at,
        "started_at": room.started_at,
        "ended_at": room.ended_at,
        "pinned_product_id": room.pinned_product_id,
        "end_untold": room.end_untold,
        "slow_mode_seconds": room.slow_mode_seconds,
        "blocked_words": list(room.blocked_words),
    }


def _room_from(doc: Document) -> Room:
    return Room(
        id=doc["_id"],
        host_id=doc["host_id"],
        title=doc["title"],
        status=RoomStatus(doc["status"]),
        created_at=doc["created_at"],
        scheduled_at=doc.get("scheduled_at"),
        started_at=doc.get("started_at"),
        ended_at=doc.get("ended_at"),
        pinned_product_id=doc.get("pinned_product_id"),
        slow_mode_seconds=doc.get("slow_mode_seconds", 0),
        blocked_words=list(doc.get("blocked_words", [])),
        kept_likes=doc.get("likes", 0),
        kept_peak_viewers=doc.get("peak_viewers", 0),
        end_untold=doc.get("end_untold", False),
    )
