"""The MongoDB store for flash offers, on PyMongo's async API.

An offer's end, the release of its launch key and its launch's count are each one conditional
update of the offer's document: of the processes acting on it at once, exactly one matches.
The documents themselves are in order_docs.py.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern

from server.adapters.mongo.order_docs import (
    LAUNCH_TO_COUNT,
    TAKEN_AT_END,
    offer_doc,
    offer_from,
)
from server.adapters.mongo.stores import Document, collection, translate_errors
from server.domain.errors import Conflict, LaunchKeyTaken, NotFound, ProductOffersChanged
from server.domain.offers import EndReason, FlashOffer
from server.domain.times import utc_ms

OFFERS = "offers"
# Set on an offer, with its end, until its stock is stopped and its room told of the end.
END_TO_FINISH = "end_to_finish"
# The launcher's idempotency key, on offers launched with one: unique in its room.
LAUNCH_KEY = "launch_key"
# When the end's note was cleared: settling waits LATE_ORDERS from then.
END_FINISHED_AT = "end_finished_at"
# Set as the launch counts it, until the launch has told the room (OfferStore.launch_told).
LAUNCH_TO_TELL = "launch_to_tell"
# Which offer of its product an offer is (1, 2, ...): unique, so two launches racing to book
# the same product's stock cannot both get in.
PRODUCT_LAUNCH = "product_launch"


async def ensure_offer_indexes(db: AsyncDatabase[Any]) -> None:
    """Create every index the offer store relies on; safe to run at each start."""
    await collection(db, OFFERS).create_indexes(
        [
            IndexModel(
                [("room_id", ASCENDING), ("ended_at", ASCENDING), ("starts_at", ASCENDING)],
                name="room_open",
            ),
            IndexModel([("ended_at", ASCENDING), ("ends_at", ASCENDING)], name="due_to_end"),
            IndexModel([("product_id", ASCENDING)], name="product"),
            IndexModel(
                [("settled_at", ASCENDING), ("ended_at", ASCENDING), ("_id", ASCENDING)],
                name="due_to_settle",
            ),
            # Offers launched before this index have no launch number: they are left out.
            IndexModel(
                [("product_id", ASCENDING), (PRODUCT_LAUNCH, ASCENDING)],
                name=PRODUCT_LAUNCH,
                unique=True,
                partialFilterExpression={PRODUCT_LAUNCH: {"$exists": True}},
            ),
            IndexModel(
                [("room_id", ASCENDING), (LAUNCH_KEY, ASCENDING)],
                name=LAUNCH_KEY,
                unique=True,
                partialFilterExpression={LAUNCH_KEY: {"$exists": True}},
            ),
            # Only the few offers whose end is being finished are in it.
            IndexModel(
                [(END_TO_FINISH, ASCENDING)],
                name=END_TO_FINISH,
                partialFilterExpression={END_TO_FINISH: True},
            ),
            # Only the offers being launched, and those whose launch died, are in it.
            IndexModel(
                [(LAUNCH_TO_COUNT, ASCENDING), ("created_at", ASCENDING)],
                name=LAUNCH_TO_COUNT,
                partialFilterExpression={LAUNCH_TO_COUNT: True},
            ),
            # Only the offers being launched, and those whose launch died before telling.
            IndexModel(
                [(LAUNCH_TO_TELL, ASCENDING), ("created_at", ASCENDING)],
                name=LAUNCH_TO_TELL,
                partialFilterExpression={LAUNCH_TO_TELL: True},
            ),
        ]
    )


class MongoOfferStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._offers = collection(db, OFFERS)
        # A linearizable read confirms with a majority that its primary is still the primary.
        self._latest = self._offers.with_options(read_concern=ReadConcern("linearizable"))

    @translate_errors
    async def create(
        self, offer: FlashOffer, *, nth_of_product: int, launch_key: str | None = None
    ) -> None:
        # The unique index on (product, launch) lets one of two launches racing for the same
        # place in; the other checks the product's stock again (see ProductBookings.book).
        doc = {**offer_doc(offer), PRODUCT_LAUNCH: nth_of_product, LAUNCH_TO_COUNT: True}
        if launch_key is not None:
            doc[LAUNCH_KEY] = launch_key
        try:
            await self._offers.insert_one(doc)
        except DuplicateKeyError as exc:
            taken = (exc.details or {}).get("keyPattern", {})
            if LAUNCH_KEY in taken:
                raise LaunchKeyTaken("an offer was launched under this key already") from None
            if PRODUCT_LAUNCH in taken:
                raise ProductOffersChanged(
                    "another offer of this product was launched meanwhile"
                ) from None
            raise Conflict(f"offer {offer.id} exists") from None

    @translate_errors
    async def launch_counted(self, offer_id: str) -> bool:
        # Untold from its first count only: a launch sent again counts a told offer again.
        first_count = {"$eq": [f"${LAUNCH_TO_COUNT}", True]}
        result = await self._offers.update_one(
            {"_id": offer_id, "ended_at": None},
            [
                {"$set": {LAUNCH_TO_TELL: {"$cond": [first_count, True, f"${LAUNCH_TO_TELL}"]}}},
                {"$unset": LAUNCH_TO_COUNT},
            ],
        )
        return result.matched_count == 1

    @translate_errors
    async def launch_told(self, offer_id: str) -> None:
        await self._offers.update_one({"_id": offer_id}, {"$unset": {LAUNCH_TO_TELL: ""}})

    async def untold_launches(
        self, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        return await self._running_launches_noted(LAUNCH_TO_TELL, created_before, limit)

    async def uncounted_launches(
        self, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        return await self._running_launches_noted(LAUNCH_TO_COUNT, created_before, limit)

    @translate_errors
    async def _running_launches_noted(
        self, note: str, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        """Offers not ended, created before `created_before`, that still carry this launch
        note: oldest first, on the note's partial index."""
        cursor = (
            self._offers.find({note: True, "created_at": {"$lt": created_before}, "ended_at": None})
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [offer_from(doc) async for doc in cursor]

    @translate_errors
    async def by_launch_key(self, room_id: str, launch_key: str) -> FlashOffer | None:
        doc = await self._offers.find_one({"room_id": room_id, LAUNCH_KEY: launch_key})
        return None if doc is None else offer_from(doc)

    @translate_errors
    async def of_product(self, product_id: str) -> builtins.list[FlashOffer]:
        cursor = self._offers.find({"product_id": product_id}).sort(
            [("starts_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [offer_from(doc) async for doc in cursor]

    @translate_errors
    async def get(self, offer_id: str) -> FlashOffer:
        return await _offer_in(self._offers, offer_id)

    @translate_errors
    async def get_latest(self, offer_id: str) -> FlashOffer:
        return await _offer_in(self._latest, offer_id)

    @translate_errors
    async def open_in_room(self, room_id: str) -> builtins.list[FlashOffer]:
        cursor = self._offers.find({"room_id": room_id, "ended_at": None}).sort(
            [("starts_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [offer_from(doc) async for doc in cursor]

    @translate_errors
    async def in_room(self, room_id: str, limit: int) -> builtins.list[FlashOffer]:
        cursor = self._offers.find({"room_id": room_id}).sort(
            [("starts_at", DESCENDING), ("_id", DESCENDING)]
        )
        latest = [offer_from(doc) async for doc in cursor.limit(limit)]
        return latest[::-1]

    @translate_errors
    async def record_end(
        self,
        offer_id: str,
        reason: EndReason,
        at: datetime,
        *,
        free_launch_key: bool = False,
        if_uncounted: bool = False,
    ) -> FlashOffer | None:
        # One conditional update: of any number of processes ending the offer at once, the
        # server lets exactly one match `ended_at: null`. The key goes in the same write, so
        # no moment shows a withdrawn launch's key with its offer ended.
        running: Document = {"_id": offer_id, "ended_at": None}
        if if_uncounted:
            running[LAUNCH_TO_COUNT] = True
        unset = {LAUNCH_TO_COUNT: "", LAUNCH_TO_TELL: ""}  # nothing left to tell: it has ended
        if free_launch_key:
            unset[LAUNCH_KEY] = ""
        change: Document = {
            "$set": {"ended_at": utc_ms(at), "end_reason": reason.value, END_TO_FINISH: True},
            "$unset": unset,
        }
        doc = await self._offers.find_one_and_update(
            running, change, return_document=ReturnDocument.AFTER
        )
        if doc is not None:
            return offer_from(doc)
        # Ended already: its key goes (one still running keeps it). Not for the withdrawal of
        # an uncounted launch: its launch counted it first, and answered with it.
        if free_launch_key and not if_uncounted:
            await self._offers.update_one(
                {"_id": offer_id, "ended_at": {"$ne": None}}, {"$unset": {LAUNCH_KEY: ""}}
            )
        await self.get(offer_id)  # NotFound for an unknown offer rather than "already ended"
        return None

    @translate_errors
    async def unfinished_ends(
        self, limit: int, *, room_id: str | None = None
    ) -> builtins.list[FlashOffer]:
        unfinished: Document = {END_TO_FINISH: True}  # few: its partial index holds them alone
        if room_id is not None:
            unfinished["room_id"] = room_id
        cursor = self._offers.find(unfinished).sort("_id", ASCENDING).limit(limit)
        return [offer_from(doc) async for doc in cursor]

    @translate_errors
    async def end_finished(self, offer_id: str, at: datetime, *, taken: int | None) -> None:
        await self._offers.update_one(  # once: finishing it again must not put off settling
            {"_id": offer_id, END_TO_FINISH: True},
            {
                "$unset": {END_TO_FINISH: ""},
                "$set": {END_FINISHED_AT: utc_ms(at), TAKEN_AT_END: taken},
            },
        )

    @translate_errors
    async def due_to_settle(
        self, finished_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        cursor = (
            self._offers.find(
                {
                    "settled_at": None,  # also matches offers stored before the field existed
                    "ended_at": {"$lte": finished_before},
                    END_TO_FINISH: {"$exists": False},
                    # Missing on offers ended before ends were noted: they finished as they ended.
                    END_FINISHED_AT: {"$not": {"$gt": finished_before}},
                }
            )
            .sort([("ended_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [offer_from(doc) async for doc in cursor]

    @translate_errors
    async def record_settled(self, offer_id: str, at: datetime) -> None:
        await self._offers.update_one(
            {"_id": offer_id, "settled_at": None}, {"$set": {"settled_at": utc_ms(at)}}
        )

    @translate_errors
    async def running_ids(self, limit: int) -> builtins.list[str]:
        cursor = (
            self._offers.find({"ended_at": None}, projection={"_id": True})
            .sort("ends_at", ASCENDING)  # as the due_to_end index (ended_at, ends_at) has them
            .limit(limit)
        )
        return [doc["_id"] async for doc in cursor]

    @translate_errors
    async def due_to_end(self, now: datetime, limit: int) -> builtins.list[FlashOffer]:
        cursor = (
            self._offers.find({"ended_at": None, "ends_at": {"$lte": now}})
            .sort([("ends_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [offer_from(doc) async for doc in cursor]


async def _offer_in(offers: AsyncCollection[Document], offer_id: str) -> FlashOffer:
    doc = await offers.find_one({"_id": offer_id})
    if doc is None:
        raise NotFound(f"offer {offer_id} not found")
    return offer_from(doc)
