"""One suite for the room and product stores, run against memory and a real MongoDB."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from bson import Decimal128

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.mongo.stores import (
    PRODUCTS,
    ROOM_BANS,
    ROOMS,
    MongoProductStore,
    MongoRoomStore,
    ensure_indexes,
)
from server.domain.errors import Conflict, NotFound
from server.domain.money import Money
from server.domain.pages import PageKey
from server.domain.products import Product
from server.domain.rooms import MAX_MUTES, Room, RoomStatus
from server.ports import ProductStore, RoomStore

T0 = datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)


@dataclass
class Stores:
    rooms: RoomStore
    products: ProductStore
    raw: Any = None  # the Mongo database, for checks of the stored form


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        return Stores(MemoryRoomStore(), MemoryProductStore())
    # Asked for here only, so the memory runs need no MongoDB.
    db = request.getfixturevalue("mongo_db")
    return Stores(MongoRoomStore(db), MongoProductStore(db), raw=db)


def _room(room_id: str = "r_1", *, minutes: int = 0, **fields: Any) -> Room:
    return Room(
        id=room_id,
        host_id="host-1",
        title="Spring drop",
        status=RoomStatus.SCHEDULED,
        created_at=T0 + timedelta(minutes=minutes),
        **fields,
    )


def _product(product_id: str = "p_1", price: Money | None = None) -> Product:
    return Product(
        id=product_id,
        owner_id="host-1",
        title="Silk scarf",
        price=price or Money(Decimal("12.50"), "USD"),
        stock=7,
        created_at=T0,
        images=["https://img.example/a.jpg", "https://img.example/b.jpg"],
    )


@pytest.mark.parametrize(
    "price",
    [Money(Decimal("12.50"), "USD"), Money(Decimal("1500"), "JPY"), Money(Decimal("0.125"), "KWD")],
)
async def test_product_reads_back_exactly(stores: Stores, price: Money) -> None:
    await stores.products.create(_product(price=price))
    got = await stores.products.get("p_1")
    assert got == _product(price=price)
    assert str(got.price.amount) == str(price.amount)  # "12.50" keeps its trailing zero
    assert got.created_at.utcoffset() == timedelta(0)


async def test_product_missing_or_duplicate(stores: Stores) -> None:
    with pytest.raises(NotFound):
        await stores.products.get("p_missing")
    await stores.products.create(_product())
    with pytest.raises(Conflict):
        await stores.products.create(_product())


async def test_room_reads_back_exactly(stores: Stores) -> None:
    room = _room(
        scheduled_at=T0 + timedelta(days=1),
        pinned_product_id="p_1",
        slow_mode_seconds=15,
        blocked_words=["spam", "scam"],
    )
    await stores.rooms.create(room)
    got = await stores.rooms.get("r_1")
    assert got == room
    assert got.scheduled_at is not None
    assert got.scheduled_at.utcoffset() == timedelta(0)


async def test_room_missing_or_duplicate(stores: Stores) -> None:
    with pytest.raises(NotFound):
        await stores.rooms.get("r_missing")
    await stores.rooms.create(_room())
    with pytest.raises(Conflict):
        await stores.rooms.create(_room())


async def test_list_filters_by_status_newest_first(stores: Stores) -> None:
    for i in range(4):
        room = _room(f"r_{i}", minutes=i)
        if i % 2:
            room.start(T0 + timedelta(hours=1))
        await stores.rooms.create(room)

    live = await stores.rooms.list(status=RoomStatus.LIVE, limit=10)
    assert [r.id for r in live] == ["r_3", "r_1"]
    everything = await stores.rooms.list(status=None, limit=3)
    assert [r.id for r in everything] == ["r_3", "r_2", "r_1"]
    assert await stores.rooms.list(status=RoomStatus.ENDED, limit=10) == []


async def test_list_pages_after_a_key(stores: Stores) -> None:
    """Newest first by (created_at, id), a page after the last one shown: rooms created in the
    same millisecond are told apart by id, and none is skipped or shown twice."""
    ids = ["r_0", "r_1", "r_2a", "r_2b", "r_2c", "r_3"]
    for room_id in ids:
        await stores.rooms.create(_room(room_id, minutes=int(room_id[2])))
    seen: list[str] = []
    after: PageKey | None = None
    while page := await stores.rooms.list(status=None, limit=2, after=after):
        seen += [room.id for room in page]
        after = PageKey.of(page[-1])
    assert seen == ids[::-1]
    same_minute = PageKey(T0 + timedelta(minutes=2), "r_2b")
    assert [r.id for r in await stores.rooms.list(status=None, limit=9, after=same_minute)] == [
        "r_2a",
        "r_1",
        "r_0",
    ]
    assert await stores.rooms.list(status=RoomStatus.LIVE, limit=9, after=same_minute) == []


async def test_list_pages_within_a_status(stores: Stores) -> None:
    for i in range(6):
        room = _room(f"r_{i}", minutes=i // 2)  # two rooms a minute: ties broken by id
        if i != 3:
            room.start(T0 + timedelta(hours=1))
        await stores.rooms.create(room)
    first = await stores.rooms.list(status=RoomStatus.LIVE, limit=2)
    assert [r.id for r in first] == ["r_5", "r_4"]
    rest = await stores.rooms.list(status=RoomStatus.LIVE, limit=9, after=PageKey.of(first[-1]))
    assert [r.id for r in rest] == ["r_2", "r_1", "r_0"]  # r_3 is scheduled, not live


async def test_save_is_a_compare_and_set_on_status(stores: Stores) -> None:
    await stores.rooms.create(_room())
    room = await stores.rooms.get("r_1")
    room.start(T0 + timedelta(minutes=1))
    await stores.rooms.save(room, expected_status=RoomStatus.SCHEDULED)
    assert await stores.rooms.get("r_1") == room

    stale = await stores.rooms.get("r_1")
    stale.status = RoomStatus.SCHEDULED
    stale.start(T0 + timedelta(minutes=2))
    with pytest.raises(Conflict) as error:
        await stores.rooms.save(stale, expected_status=RoomStatus.SCHEDULED)
    assert error.value.code == "invalid_room_state"
    assert await stores.rooms.get("r_1") == room

    with pytest.raises(NotFound):
        await stores.rooms.save(_room("r_missing"), expected_status=RoomStatus.SCHEDULED)


async def test_each_pin_of_a_room_has_a_higher_number(stores: Stores) -> None:
    await stores.rooms.create(_room())
    await stores.rooms.create(_room("r_2"))
    numbers = [await stores.rooms.pin("r_1", product) for product in ("p_1", "p_2", "p_1")]
    assert numbers == sorted(set(numbers))
    assert await stores.rooms.pin("r_2", "p_1") >= 1


async def test_a_pin_outlives_a_start_or_an_end_saved_from_an_earlier_read(
    stores: Stores,
) -> None:
    await stores.rooms.create(_room())
    read_before_the_pin = await stores.rooms.get("r_1")
    await stores.rooms.pin("r_1", "p_9")
    read_before_the_pin.start(T0)
    await stores.rooms.save(read_before_the_pin, expected_status=RoomStatus.SCHEDULED)
    assert (await stores.rooms.get("r_1")).pinned_product_id == "p_9"

    read_before_the_pin = await stores.rooms.get("r_1")
    await stores.rooms.pin("r_1", "p_8")
    read_before_the_pin.end(T0 + timedelta(minutes=1))
    await stores.rooms.save(read_before_the_pin, expected_status=RoomStatus.LIVE)
    ended = await stores.rooms.get("r_1")
    assert (ended.status, ended.pinned_product_id) == (RoomStatus.ENDED, "p_8")

    with pytest.raises(Conflict) as error:
        await stores.rooms.pin("r_1", "p_7")
    assert error.value.code == "invalid_room_state"
    assert (await stores.rooms.get("r_1")).pinned_product_id == "p_8"
    with pytest.raises(NotFound):
        await stores.rooms.pin("r_missing", "p_7")


async def test_an_end_stays_untold_until_told(stores: Stores) -> None:
    for room_id, minute in [("r_early", 1), ("r_late", 3), ("r_live", 0)]:
        await stores.rooms.create(_room(room_id))
        room = await stores.rooms.get(room_id)
        room.start(T0)
        if minute:
            room.end(T0 + timedelta(minutes=minute))
        await stores.rooms.save(room, expected_status=RoomStatus.SCHEDULED)
    ended_by = T0 + timedelta(minutes=3)
    assert sorted(await stores.rooms.untold_ends(ended_by, 10)) == ["r_early", "r_late"]
    assert await stores.rooms.untold_ends(ended_by - timedelta(milliseconds=1), 10) == ["r_early"]
    assert len(await stores.rooms.untold_ends(ended_by, 1)) == 1
    assert await stores.rooms.untold_ends(ended_by, 10, skip={"r_early"}) == ["r_late"]
    await stores.rooms.end_told("r_early")
    assert await stores.rooms.untold_ends(ended_by, 10) == ["r_late"]
    assert not (await stores.rooms.get("r_early")).end_untold


async def test_settings_are_stored(stores: Stores) -> None:
    await stores.rooms.create(_room())
    await stores.rooms.set_slow_mode("r_1", 30)
    await stores.rooms.set_blocked_words("r_1", ["fake", "spam"])
    got = await stores.rooms.get("r_1")
    assert (got.slow_mode_seconds, got.blocked_words) == (30, ["fake", "spam"])

    with pytest.raises(NotFound):
        await stores.rooms.set_slow_mode("r_missing", 30)
    with pytest.raises(NotFound):
        await stores.rooms.set_blocked_words("r_missing", [])


async def test_save_keeps_settings_changed_meanwhile(
    stores: Stores, request: pytest.FixtureRequest
) -> None:
    await stores.rooms.create(_room())
    room = await stores.rooms.get("r_1")
    await stores.rooms.set_blocked_words("r_1", ["spam"])
    room.start(T0)
    await stores.rooms.save(room, expected_status=RoomStatus.SCHEDULED)
    assert (await stores.rooms.get("r_1")).blocked_words == ["spam"]


async def test_kept_counters_only_rise_and_outlive_a_save(stores: Stores) -> None:
    await stores.rooms.create(_room())
    room = await stores.rooms.get("r_1")
    assert (room.kept_likes, room.kept_peak_viewers) == (0, 0)
    assert await stores.rooms.keep_counters("r_1", 40, 3) == (40, 3)
    # Read by a process after Redis lost them: it learns what the others kept.
    assert await stores.rooms.keep_counters("r_1", 12, 5) == (40, 5)
    room.start(T0)  # a room read before they were kept, saved after
    await stores.rooms.save(room, expected_status=RoomStatus.SCHEDULED)
    got = await stores.rooms.get("r_1")
    assert (got.kept_likes, got.kept_peak_viewers) == (40, 5)
    assert await stores.rooms.keep_counters("r_missing", 1, 1) == (0, 0)  # changes nothing
    with pytest.raises(NotFound):
        await stores.rooms.get("r_missing")


async def test_bans_are_per_room_and_idempotent(stores: Stores) -> None:
    await stores.rooms.ban("r_1", "u_1", by="host-1", at=T0)
    await asyncio.gather(*(stores.rooms.ban("r_1", "u_2", by="host-1", at=T0) for _ in range(5)))
    await stores.rooms.ban("r_1", "u_1", by="mod-1", at=T0 + timedelta(minutes=1))

    assert await stores.rooms.is_banned("r_1", "u_1")
    assert await stores.rooms.is_banned("r_1", "u_2")
    assert not await stores.rooms.is_banned("r_2", "u_1")
    assert not await stores.rooms.is_banned("r_1", "u_3")
    assert await stores.rooms.banned_users("r_1") == {"u_1", "u_2"}
    assert await stores.rooms.banned_users("r_2") == frozenset()
    if stores.raw is not None:
        assert await stores.raw[ROOM_BANS].count_documents({}) == 2


async def test_ban_checks_asked_together_each_get_their_own_answer(stores: Stores) -> None:
    """A room's viewers coming back at once: every check answers for its room and its user,
    however many ask together, and a ban made before a check refuses it."""
    for n in range(0, 600, 7):
        await stores.rooms.ban("r_1", f"u_{n}", by="host-1", at=T0)
    await stores.rooms.ban("r_2", "u_1", by="host-2", at=T0)
    asked = [(room, f"u_{n}") for n in range(600) for room in ("r_1", "r_2")] * 2
    answers = await asyncio.gather(*(stores.rooms.is_banned(room, user) for room, user in asked))
    expected = [
        (room == "r_1" and int(user[2:]) % 7 == 0) or (room, user) == ("r_2", "u_1")
        for room, user in asked
    ]
    assert answers == expected

    # Checks on their way while a ban is made: a check asked after it refuses the user.
    checks = [asyncio.ensure_future(stores.rooms.is_banned("r_1", f"u_{n}")) for n in range(50)]
    await stores.rooms.ban("r_1", "late", by="host-1", at=T0)
    assert await stores.rooms.is_banned("r_1", "late")
    banned = [n for n, check in enumerate(await asyncio.gather(*checks)) if check]
    assert banned == list(range(0, 50, 7))


async def test_mutes_are_per_room_and_replaced(stores: Stores) -> None:
    await stores.rooms.create(_room("r_1"))
    await stores.rooms.create(_room("r_2"))
    odd_user = "$where.user"  # must stay a value, never a field path or operator
    later = T0 + timedelta(minutes=10)

    await stores.rooms.mute("r_1", "u_1", until=T0 + timedelta(minutes=5), at=T0)
    await stores.rooms.mute("r_1", odd_user, until=later, at=T0)
    await stores.rooms.mute("r_1", "u_1", until=later, at=T0)

    assert await stores.rooms.mutes("r_1") == {"u_1": later, odd_user: later}
    assert await stores.rooms.mutes("r_2") == {}
    assert await stores.rooms.mutes("r_missing") == {}
    # A lifecycle save does not drop the mutes kept beside the room.
    room = await stores.rooms.get("r_1")
    room.start(T0)
    await stores.rooms.save(room, expected_status=RoomStatus.SCHEDULED)
    assert await stores.rooms.mutes("r_1") == {"u_1": later, odd_user: later}


async def test_mutes_that_are_over_are_dropped_and_running_ones_bounded(stores: Stores) -> None:
    await stores.rooms.create(_room("r_1"))
    soon, later = T0 + timedelta(minutes=1), T0 + timedelta(minutes=10)
    await stores.rooms.mute("r_1", "u_over", until=soon, at=T0)
    for n in range(MAX_MUTES - 1):
        await stores.rooms.mute("r_1", f"u_{n}", until=later, at=T0)
    with pytest.raises(Conflict) as full:  # u_over's still runs
        await stores.rooms.mute("r_1", "u_new", until=later, at=T0)
    assert full.value.code == "too_many_mutes"
    assert len(await stores.rooms.mutes("r_1")) == MAX_MUTES  # nothing changed
    await stores.rooms.mute("r_1", "u_0", until=later + timedelta(minutes=1), at=T0)  # replaced
    await stores.rooms.mute("r_1", "u_new", until=later, at=soon)  # u_over's is over: dropped
    mutes = await stores.rooms.mutes("r_1")
    assert len(mutes) == MAX_MUTES
    assert "u_over" not in mutes
    assert mutes["u_0"] == later + timedelta(minutes=1)
    assert mutes["u_new"] == later
    with pytest.raises(NotFound):
        await stores.rooms.mute("r_missing", "u_1", until=later, at=T0)


async def test_a_ban_or_a_mute_is_lifted_for_its_room_and_user_alone(stores: Stores) -> None:
    await stores.rooms.create(_room("r_1"))
    odd_user = "$where.user"
    later = T0 + timedelta(minutes=10)
    for user in ("u_1", "u_2", odd_user):
        await stores.rooms.ban("r_1", user, by="host-1", at=T0)
        await stores.rooms.mute("r_1", user, until=later, at=T0)
    await stores.rooms.ban("r_2", "u_1", by="host-2", at=T0)

    assert await stores.rooms.unban("r_1", "u_1")
    assert await stores.rooms.unban("r_1", odd_user)
    assert not await stores.rooms.unban("r_1", "u_never")  # nothing to lift: nothing changes
    assert not await stores.rooms.unban("r_1", "u_1")  # lifted already
    assert await stores.rooms.unmute("r_1", odd_user, at=T0)
    assert not await stores.rooms.unmute("r_1", "u_never", at=T0)
    assert not await stores.rooms.unmute("r_1", odd_user, at=T0)

    assert await stores.rooms.banned_users("r_1") == {"u_2"}
    assert not await stores.rooms.is_banned("r_1", "u_1")
    assert await stores.rooms.is_banned("r_2", "u_1")
    assert await stores.rooms.mutes("r_1") == {"u_1": later, "u_2": later}
    with pytest.raises(NotFound):
        await stores.rooms.unmute("r_missing", "u_1", at=T0)
    await stores.rooms.ban("r_1", "u_1", by="host-1", at=T0)  # banned again, after all
    assert await stores.rooms.is_banned("r_1", "u_1")


async def test_a_mute_that_is_over_is_not_lifted(stores: Stores) -> None:
    """Lifting it would tell the room of a mute that no longer held anyone."""
    await stores.rooms.create(_room("r_1"))
    until = T0 + timedelta(minutes=1)
    await stores.rooms.mute("r_1", "u_1", until=until, at=T0)
    assert not await stores.rooms.unmute("r_1", "u_1", at=until)
    await stores.rooms.mute("r_1", "u_1", until=until, at=T0)
    assert await stores.rooms.unmute("r_1", "u_1", at=until - timedelta(milliseconds=1))
    assert await stores.rooms.mutes("r_1") == {}


async def test_ping(stores: Stores) -> None:
    await stores.rooms.ping()


async def test_mongo_keeps_money_as_decimal128(mongo_db: Any) -> None:
    await MongoProductStore(mongo_db).create(_product())
    doc = await mongo_db[PRODUCTS].find_one({"_id": "p_1"})
    assert doc["price"] == {"amount": Decimal128("12.50"), "currency": "USD"}


async def test_mongo_indexes(mongo_db: Any) -> None:
    await ensure_indexes(mongo_db)  # a second run at the next start is harmless
    bans = await mongo_db[ROOM_BANS].index_information()
    assert bans["room_user"]["unique"] is True
    assert bans["room_user"]["key"] == [("room_id", 1), ("user_id", 1)]
    rooms = await mongo_db[ROOMS].index_information()
    assert rooms["status_created_at"]["key"][:2] == [("status", 1), ("created_at", -1)]
    assert rooms["untold_ends"]["partialFilterExpression"] == {"end_untold": True}
