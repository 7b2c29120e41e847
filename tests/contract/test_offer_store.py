"""One suite for the offer store, run against memory and a real MongoDB: offers read back
exactly, open offers by room, and an end recorded exactly once however many processes race."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from bson import Decimal128

from server.adapters.memory_orders import MemoryOfferStore
from server.adapters.mongo.offers import OFFERS, MongoOfferStore
from server.adapters.mongo.orders import ensure_order_indexes
from server.domain.errors import Conflict, LaunchKeyTaken, NotFound, ProductOffersChanged
from server.domain.money import Money
from server.domain.offers import EndReason, FlashOffer
from server.ports import OfferStore

T0 = datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def offers(request: pytest.FixtureRequest) -> OfferStore:
    if request.param == "memory":
        return MemoryOfferStore()
    return MongoOfferStore(request.getfixturevalue("mongo_db"))


def _offer(
    offer_id: str = "of_1",
    *,
    room_id: str = "r_1",
    product_id: str | None = None,
    starts_in: int = 0,
    minutes: int = 5,
    price: Money | None = None,
    created_at: datetime = T0,
) -> FlashOffer:
    """An offer as a launch stores it: not yet counted against its product's stock."""
    starts = T0 + timedelta(seconds=starts_in)
    return FlashOffer(
        id=offer_id,
        room_id=room_id,
        product_id=product_id or f"p_{offer_id}",
        host_id="host-1",
        price=price or Money(Decimal("9.90"), "EUR"),
        quantity=500,
        per_user_limit=2,
        starts_at=starts,
        ends_at=starts + timedelta(minutes=minutes),
        created_at=created_at,
        counted=False,
    )


async def _stored_by_an_older_version(mongo_db: Any, change: dict[str, Any]) -> OfferStore:
    """The offer store, holding offer `of_old` as an older version stored it: `change` turns
    what this version stores into that."""
    offers = MongoOfferStore(mongo_db)
    await offers.create(_offer("of_old"), nth_of_product=1)
    await mongo_db[OFFERS].update_one({"_id": "of_old"}, change)
    return offers


@pytest.mark.parametrize(
    "price", [Money(Decimal("9.90"), "EUR"), Money(Decimal("1500"), "JPY"), None]
)
async def test_offer_reads_back_exactly(offers: OfferStore, price: Money | None) -> None:
    offer = _offer(price=price)
    await offers.create(offer, nth_of_product=1)
    got = await offers.get("of_1")
    assert got == offer
    assert str(got.price.amount) == str(offer.price.amount)
    assert got.starts_at.utcoffset() == timedelta(0)
    assert got.ended_at is None
    await offers.launch_counted("of_1")
    assert await offers.get("of_1") == replace(offer, counted=True)
    assert await offers.get_latest("of_1") == replace(offer, counted=True)


async def test_offers_whose_launch_never_counted_them_are_found(offers: OfferStore) -> None:
    later = T0 + timedelta(seconds=30)
    for offer_id, created_at in [("of_b", T0), ("of_a", T0), ("of_new", later)]:
        await offers.create(_offer(offer_id, created_at=created_at), nth_of_product=1)
    await offers.create(_offer("of_counted"), nth_of_product=1)
    assert await offers.launch_counted("of_counted")
    assert await offers.launch_counted("of_counted")  # once is enough
    await offers.create(_offer("of_ended"), nth_of_product=1)
    await offers.record_end("of_ended", EndReason.STOPPED, T0, free_launch_key=True)
    assert not await offers.launch_counted("of_ended")  # withdrawn first: it stays ended

    assert [o.id for o in await offers.uncounted_launches(later, 10)] == ["of_a", "of_b"]
    assert [o.id for o in await offers.uncounted_launches(later, 1)] == ["of_a"]
    assert [o.id for o in await offers.uncounted_launches(T0, 10)] == []
    found = await offers.uncounted_launches(later + timedelta(seconds=1), 10)
    assert [o.id for o in found] == ["of_a", "of_b", "of_new"]
    assert not any(o.counted for o in found)


async def test_offers_counted_but_never_told_are_found(offers: OfferStore) -> None:
    later = T0 + timedelta(seconds=30)
    for offer_id, created_at in [("of_b", T0), ("of_a", T0), ("of_new", later)]:
        await offers.create(_offer(offer_id, created_at=created_at), nth_of_product=1)
        assert await offers.launch_counted(offer_id)
    await offers.create(_offer("of_uncounted"), nth_of_product=1)  # withdrawn, if ever
    await offers.create(_offer("of_told"), nth_of_product=1)
    assert await offers.launch_counted("of_told")
    await offers.launch_told("of_told")
    assert await offers.launch_counted("of_told")  # a launch sent again: still told
    await offers.create(_offer("of_ended"), nth_of_product=1)
    assert await offers.launch_counted("of_ended")
    await offers.record_end("of_ended", EndReason.STOPPED, T0)

    assert [o.id for o in await offers.untold_launches(later, 10)] == ["of_a", "of_b"]
    assert [o.id for o in await offers.untold_launches(later, 1)] == ["of_a"]
    assert await offers.untold_launches(T0, 10) == []
    found = await offers.untold_launches(later + timedelta(seconds=1), 10)
    assert [o.id for o in found] == ["of_a", "of_b", "of_new"]
    assert all(o.counted for o in found)
    await offers.launch_told("of_a")
    assert [o.id for o in await offers.untold_launches(later, 10)] == ["of_b"]


async def test_a_withdrawal_of_an_uncounted_launch_loses_to_its_count(offers: OfferStore) -> None:
    await offers.create(_offer("of_a"), nth_of_product=1, launch_key="host-1:L1")
    assert await offers.launch_counted("of_a")
    refused = await offers.record_end(
        "of_a", EndReason.STOPPED, T0, free_launch_key=True, if_uncounted=True
    )
    assert refused is None
    running = await offers.get("of_a")
    assert (running.ended_at, running.counted) == (None, True)
    assert await offers.by_launch_key("r_1", "host-1:L1") == running  # it keeps its key

    await offers.create(_offer("of_b"), nth_of_product=1, launch_key="host-1:L2")
    withdrawn = await offers.record_end(
        "of_b", EndReason.STOPPED, T0, free_launch_key=True, if_uncounted=True
    )
    assert withdrawn is not None
    assert (withdrawn.end_reason, withdrawn.counted) == (EndReason.STOPPED, True)  # note gone
    assert await offers.by_launch_key("r_1", "host-1:L2") is None
    assert await offers.uncounted_launches(T0 + timedelta(hours=1), 10) == []

    # Counted, then ended by its host: a withdrawal landing late leaves its key to it.
    await offers.record_end("of_a", EndReason.STOPPED, T0)
    late = await offers.record_end(
        "of_a", EndReason.STOPPED, T0, free_launch_key=True, if_uncounted=True
    )
    assert late is None
    assert await offers.by_launch_key("r_1", "host-1:L1") == await offers.get("of_a")


async def test_any_end_clears_the_note_of_an_uncounted_launch(offers: OfferStore) -> None:
    await offers.create(_offer("of_a"), nth_of_product=1)
    ended = await offers.record_end("of_a", EndReason.EXPIRED, T0)
    assert ended is not None
    assert ended.counted
    assert (await offers.get("of_a")).counted


async def test_mongo_an_offer_stored_before_launches_were_counted_reads_as_counted(
    mongo_db: Any,
) -> None:
    offers = await _stored_by_an_older_version(
        mongo_db,
        # Stored before launches were noted, ended before stops counted what was taken.
        {"$set": {"ended_at": T0, "end_reason": "stopped"}, "$unset": {"launch_to_count": ""}},
    )
    old = await offers.get("of_old")
    assert (old.counted, old.taken_at_end) == (True, None)
    assert await offers.uncounted_launches(T0 + timedelta(hours=1), 10) == []


async def test_offer_missing_or_duplicate(offers: OfferStore) -> None:
    with pytest.raises(NotFound):
        await offers.get("of_missing")
    with pytest.raises(NotFound):
        await offers.get_latest("of_missing")
    await offers.create(_offer(), nth_of_product=1)
    with pytest.raises(Conflict) as refused:
        await offers.create(_offer(), nth_of_product=2)
    assert refused.value.code == "conflict"


async def test_open_in_room_by_start_time(offers: OfferStore) -> None:
    await offers.create(_offer("of_late", starts_in=60), nth_of_product=1)
    await offers.create(_offer("of_early"), nth_of_product=1)
    await offers.create(_offer("of_ended", starts_in=30), nth_of_product=1)
    await offers.create(_offer("of_elsewhere", room_id="r_2"), nth_of_product=1)
    await offers.record_end("of_ended", EndReason.STOPPED, T0 + timedelta(seconds=40))

    assert [o.id for o in await offers.open_in_room("r_1")] == ["of_early", "of_late"]
    assert [o.id for o in await offers.open_in_room("r_2")] == ["of_elsewhere"]
    assert await offers.open_in_room("r_none") == []


async def test_in_room_gives_the_latest_offers_by_start_time(offers: OfferStore) -> None:
    for n, starts_in in enumerate((0, 90, 30, 60)):
        await offers.create(_offer(f"of_{n}", starts_in=starts_in), nth_of_product=n + 1)
    await offers.create(_offer("of_elsewhere", room_id="r_2"), nth_of_product=5)
    await offers.record_end("of_0", EndReason.STOPPED, T0 + timedelta(seconds=10))

    assert [o.id for o in await offers.in_room("r_1", 10)] == ["of_0", "of_2", "of_3", "of_1"]
    assert [o.id for o in await offers.in_room("r_1", 2)] == ["of_3", "of_1"]  # the latest two
    assert await offers.in_room("r_none", 2) == []


async def test_record_end_once(offers: OfferStore) -> None:
    await offers.create(_offer(), nth_of_product=1)
    at = T0 + timedelta(minutes=1, microseconds=456789)
    ended = await offers.record_end("of_1", EndReason.SOLD_OUT, at)
    assert ended is not None
    assert (ended.end_reason, ended.ended_at) == (
        EndReason.SOLD_OUT,
        T0 + timedelta(minutes=1, microseconds=456000),  # cut to the millisecond Mongo keeps
    )
    assert await offers.get("of_1") == ended

    assert await offers.record_end("of_1", EndReason.EXPIRED, T0 + timedelta(minutes=5)) is None
    assert await offers.get("of_1") == ended  # the first end stands
    with pytest.raises(NotFound):
        await offers.record_end("of_missing", EndReason.STOPPED, T0)


async def test_racing_ends_one_wins(offers: OfferStore) -> None:
    await offers.create(_offer(), nth_of_product=1)
    reasons = [EndReason.EXPIRED, EndReason.SOLD_OUT, EndReason.STOPPED] * 4
    results = await asyncio.gather(
        *(
            offers.record_end("of_1", reason, T0 + timedelta(minutes=5, seconds=i))
            for i, reason in enumerate(reasons)
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await offers.get("of_1") == winners[0]


async def test_an_end_stays_unfinished_until_told_finished(offers: OfferStore) -> None:
    for offer_id in ("of_a", "of_b", "of_c"):
        await offers.create(_offer(offer_id), nth_of_product=1)
    assert await offers.unfinished_ends(10) == []  # running offers are not in it
    ended_b = await offers.record_end("of_b", EndReason.STOPPED, T0)
    ended_a = await offers.record_end("of_a", EndReason.SOLD_OUT, T0)
    assert ended_a is not None
    assert await offers.unfinished_ends(10) == [ended_a, ended_b]
    assert await offers.unfinished_ends(1) == [ended_a]
    await offers.end_finished("of_a", T0, taken=3)
    await offers.end_finished("of_a", T0, taken=2)  # idempotent: keeps its first figure
    await offers.end_finished("of_c", T0, taken=0)  # not ended: nothing to clear
    assert await offers.unfinished_ends(10) == [ended_b]
    assert await offers.get("of_a") == replace(ended_a, taken_at_end=3)  # the end stands
    assert (await offers.get("of_c")).taken_at_end is None
    assert await offers.record_end("of_a", EndReason.EXPIRED, T0) is None
    assert await offers.unfinished_ends(10) == [ended_b]  # a refused second end notes nothing
    await offers.end_finished("of_b", T0, taken=None)  # its stock was lost
    assert await offers.get("of_b") == ended_b


async def test_a_rooms_unfinished_ends_are_its_own(offers: OfferStore) -> None:
    """What the room's end finishes before it tells the room: no other room's."""
    await offers.create(_offer("of_here"), nth_of_product=1)
    await offers.create(_offer("of_there", room_id="r_2"), nth_of_product=1)
    await offers.create(_offer("of_running"), nth_of_product=1)
    here = await offers.record_end("of_here", EndReason.STOPPED, T0)
    there = await offers.record_end("of_there", EndReason.EXPIRED, T0)
    assert await offers.unfinished_ends(10, room_id="r_1") == [here]
    assert await offers.unfinished_ends(10, room_id="r_2") == [there]
    await offers.end_finished("of_here", T0, taken=0)
    assert await offers.unfinished_ends(10, room_id="r_1") == []


async def test_ended_offers_are_due_to_settle_once_their_end_is_finished(
    offers: OfferStore,
) -> None:
    for offer_id in ("of_a", "of_b", "of_c", "of_running"):
        await offers.create(_offer(offer_id), nth_of_product=1)
    await offers.record_end("of_a", EndReason.STOPPED, T0 + timedelta(seconds=10))
    await offers.record_end("of_b", EndReason.SOLD_OUT, T0 + timedelta(seconds=20))
    await offers.record_end("of_c", EndReason.STOPPED, T0 + timedelta(seconds=30))
    later = T0 + timedelta(hours=1)
    assert await offers.due_to_settle(later, 10) == []  # no end is finished yet
    await offers.end_finished("of_a", T0 + timedelta(minutes=5), taken=0)  # finished late
    await offers.end_finished("of_b", T0 + timedelta(seconds=21), taken=0)
    assert [o.id for o in await offers.due_to_settle(later, 10)] == ["of_a", "of_b"]
    assert [o.id for o in await offers.due_to_settle(later, 1)] == ["of_a"]
    # Settling waits from when the end was finished, not from when it was recorded.
    assert [o.id for o in await offers.due_to_settle(T0 + timedelta(minutes=1), 10)] == ["of_b"]
    # Again: keeps its first time.
    await offers.end_finished("of_b", T0 + timedelta(hours=2), taken=0)
    assert [o.id for o in await offers.due_to_settle(T0 + timedelta(minutes=1), 10)] == ["of_b"]
    await offers.record_settled("of_b", T0 + timedelta(minutes=2))
    await offers.record_settled("of_b", T0 + timedelta(minutes=3))  # once
    settled = await offers.get("of_b")
    assert settled.settled_at == T0 + timedelta(minutes=2)
    assert settled.end_reason is EndReason.SOLD_OUT  # the end itself stands
    assert [o.id for o in await offers.due_to_settle(later, 10)] == ["of_a"]


async def test_mongo_an_offer_ended_before_ends_were_noted_is_due_to_settle(
    mongo_db: Any,
) -> None:
    offers = await _stored_by_an_older_version(
        mongo_db,
        # Ended, with no note, no finishing time, no settled_at.
        {"$set": {"ended_at": T0, "end_reason": "expired"}, "$unset": {"settled_at": ""}},
    )
    assert await offers.due_to_settle(T0 - timedelta(seconds=1), 10) == []
    assert [o.id for o in await offers.due_to_settle(T0, 10)] == ["of_old"]


async def test_each_offer_of_a_product_takes_its_own_place(offers: OfferStore) -> None:
    first = _offer("of_a", product_id="p_x")
    await offers.create(first, nth_of_product=1)
    await offers.create(_offer("of_elsewhere", product_id="p_y"), nth_of_product=1)
    # A launch that read the product's offers before `first` got in: refused, nothing stored.
    with pytest.raises(ProductOffersChanged):
        await offers.create(_offer("of_b", product_id="p_x", starts_in=5), nth_of_product=1)
    with pytest.raises(NotFound):
        await offers.get("of_b")
    second = _offer("of_b", product_id="p_x", starts_in=5)
    await offers.create(second, nth_of_product=2)
    assert await offers.of_product("p_x") == [first, second]
    assert await offers.of_product("p_none") == []


async def test_an_offer_launched_under_a_key_is_found_by_it(offers: OfferStore) -> None:
    first = _offer("of_a", product_id="p_x")
    await offers.create(first, nth_of_product=1, launch_key="host-1:L1")
    await offers.create(_offer("of_b", product_id="p_x"), nth_of_product=2)  # no key
    assert await offers.by_launch_key("r_1", "host-1:L1") == first
    assert await offers.by_launch_key("r_2", "host-1:L1") is None  # keys are per room
    assert await offers.by_launch_key("r_1", "host-1:L2") is None
    with pytest.raises(LaunchKeyTaken):  # the same launch sent twice at once
        await offers.create(_offer("of_c"), nth_of_product=1, launch_key="host-1:L1")
    with pytest.raises(NotFound):
        await offers.get("of_c")
    await offers.create(_offer("of_d", room_id="r_2"), nth_of_product=1, launch_key="host-1:L1")


async def test_a_withdrawn_launch_frees_its_key_with_its_end(offers: OfferStore) -> None:
    await offers.create(_offer("of_a"), nth_of_product=1, launch_key="host-1:L1")
    ended = await offers.record_end("of_a", EndReason.STOPPED, T0, free_launch_key=True)
    assert ended is not None
    assert await offers.by_launch_key("r_1", "host-1:L1") is None
    assert await offers.unfinished_ends(10) == [ended]  # ended as any other end
    # The key is free for the launch sent again.
    await offers.create(_offer("of_b"), nth_of_product=2, launch_key="host-1:L1")
    # An offer ended already (the room's end stopped it first) has its key freed all the same.
    await offers.record_end("of_b", EndReason.STOPPED, T0)
    assert await offers.record_end("of_b", EndReason.STOPPED, T0, free_launch_key=True) is None
    assert await offers.by_launch_key("r_1", "host-1:L1") is None
    # A plain end keeps the key: the launch sent again gets its stopped offer.
    await offers.create(_offer("of_c"), nth_of_product=3, launch_key="host-1:L2")
    await offers.record_end("of_c", EndReason.STOPPED, T0)
    stopped = await offers.by_launch_key("r_1", "host-1:L2")
    assert stopped is not None
    assert stopped.id == "of_c"


async def test_racing_launches_of_a_product_one_gets_the_place(offers: OfferStore) -> None:
    results = await asyncio.gather(
        *(offers.create(_offer(f"of_{i}", product_id="p_x"), nth_of_product=1) for i in range(6)),
        return_exceptions=True,
    )
    assert sum(result is None for result in results) == 1
    assert all(isinstance(r, ProductOffersChanged) for r in results if r is not None)
    assert len(await offers.of_product("p_x")) == 1


async def test_due_to_end(offers: OfferStore) -> None:
    await offers.create(_offer("of_a", minutes=3), nth_of_product=1)
    await offers.create(_offer("of_b", minutes=1), nth_of_product=1)
    await offers.create(_offer("of_c", minutes=2), nth_of_product=1)
    await offers.create(_offer("of_later", minutes=10), nth_of_product=1)
    await offers.record_end("of_c", EndReason.SOLD_OUT, T0 + timedelta(seconds=30))
    now = T0 + timedelta(minutes=3)

    assert [o.id for o in await offers.due_to_end(now, 10)] == ["of_b", "of_a"]
    assert [o.id for o in await offers.due_to_end(now, 1)] == ["of_b"]
    assert await offers.due_to_end(T0 + timedelta(seconds=59), 10) == []
    await offers.record_end("of_b", EndReason.EXPIRED, now)
    assert [o.id for o in await offers.due_to_end(now, 10)] == ["of_a"]


async def test_running_offers_are_listed_those_ending_first_first(offers: OfferStore) -> None:
    for offer_id, minutes in (("of_a", 3), ("of_b", 1), ("of_c", 2), ("of_d", 4)):
        await offers.create(_offer(offer_id, minutes=minutes), nth_of_product=1)
    await offers.record_end("of_c", EndReason.STOPPED, T0 + timedelta(seconds=30))
    assert await offers.running_ids(10) == ["of_b", "of_a", "of_d"]
    assert await offers.running_ids(2) == ["of_b", "of_a"]


async def test_mongo_stored_form_and_indexes(mongo_db: Any) -> None:
    await MongoOfferStore(mongo_db).create(_offer(), nth_of_product=1)
    doc = await mongo_db[OFFERS].find_one({"_id": "of_1"})
    assert doc["price"] == {"amount": Decimal128("9.90"), "currency": "EUR"}
    assert doc["ended_at"] is None
    assert doc["product_launch"] == 1
    assert doc["launch_to_count"] is True  # until its launch counts it

    await ensure_order_indexes(mongo_db)  # a second run at the next start is harmless
    info = await mongo_db[OFFERS].index_information()
    assert info["room_open"]["key"][:2] == [("room_id", 1), ("ended_at", 1)]
    assert info["due_to_end"]["key"] == [("ended_at", 1), ("ends_at", 1)]
    assert info["end_to_finish"]["partialFilterExpression"] == {"end_to_finish": True}
    assert info["launch_to_count"]["partialFilterExpression"] == {"launch_to_count": True}
    assert info["due_to_settle"]["key"] == [("settled_at", 1), ("ended_at", 1), ("_id", 1)]
    assert info["launch_key"]["unique"] is True
    assert info["launch_key"]["key"] == [("room_id", 1), ("launch_key", 1)]
    assert info["product_launch"]["unique"] is True
    assert info["product_launch"]["key"] == [("product_id", 1), ("product_launch", 1)]
