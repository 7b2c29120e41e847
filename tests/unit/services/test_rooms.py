"""RoomService on the in-memory stores, with a fake of the event port that records what it hears."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.rooms import Room, RoomStatus
from server.services.rooms import RoomService
from tests.fakes import Clock, RecordingEvents
from tests.unit.services.test_give_back import FlakyEvents

HOST = Identity("host-1", Role.HOST)
OTHER_HOST = Identity("host-2", Role.HOST)
ADMIN = Identity("admin-1", Role.ADMIN)
MODERATOR = Identity("mod-1", Role.MODERATOR)
SHOPPER = Identity("shopper-1", Role.SHOPPER)

T0 = datetime(2026, 5, 14, 10, 0, 0, 123456, tzinfo=UTC)


class StaleRoomStore(MemoryRoomStore):
    """Hands out the room as it was when frozen, as a second process would hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: Room | None = None

    async def get(self, room_id: str) -> Room:
        if self.frozen is not None:
            return copy.deepcopy(self.frozen)  # each caller its own copy, as a store's reads are
        return await super().get(room_id)


@pytest.fixture
def rooms() -> StaleRoomStore:
    return StaleRoomStore()


@pytest.fixture
def events() -> RecordingEvents:
    return RecordingEvents()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def service(rooms: StaleRoomStore, events: RecordingEvents, clock: Clock) -> RoomService:
    return RoomService(rooms, MemoryProductStore(), events, clock)


async def _product(service: RoomService, owner: Identity = HOST) -> str:
    product = await service.create_product(
        owner,
        title="Silk scarf",
        price=Money(Decimal("12.50"), "USD"),
        stock=5,
        images=["https://img.example/scarf.jpg"],
    )
    return product.id


async def test_create_room_is_scheduled_and_stored(service: RoomService) -> None:
    when = datetime(2026, 6, 1, 20, 0, tzinfo=timezone(timedelta(hours=8)))
    room = await service.create_room(HOST, "Spring drop", scheduled_at=when)

    assert room.id.startswith("r_")
    assert room.status is RoomStatus.SCHEDULED
    assert room.host_id == "host-1"
    # Times are kept in UTC to the millisecond, as MongoDB stores them.
    assert room.created_at == datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)
    assert room.scheduled_at == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert await service.get_room(room.id) == room


async def test_naive_schedule_is_refused(service: RoomService) -> None:
    with pytest.raises(InvalidInput):
        await service.create_room(HOST, "Spring drop", scheduled_at=datetime(2026, 6, 1, 20))


@pytest.mark.parametrize("who", [SHOPPER, MODERATOR])
async def test_only_hosts_and_admins_create_rooms_and_products(
    service: RoomService, who: Identity
) -> None:
    with pytest.raises(Forbidden):
        await service.create_room(who, "Mine")
    with pytest.raises(Forbidden):
        await _product(service, owner=who)
    assert (await service.list_rooms(None)).items == []


async def test_admin_creates_a_room_of_their_own(service: RoomService) -> None:
    room = await service.create_room(ADMIN, "Ops check")
    assert room.host_id == ADMIN.user_id


async def test_lifecycle_publishes_after_each_change(
    service: RoomService, events: RecordingEvents, clock: Clock
) -> None:
    room = await service.create_room(HOST, "Spring drop")

    clock.now = T0 + timedelta(minutes=5)
    started = await service.start(room.id, HOST)
    assert started.status is RoomStatus.LIVE
    assert started.started_at == T0.replace(microsecond=123000) + timedelta(minutes=5)
    assert [room.id for room in (await service.list_rooms(RoomStatus.LIVE)).items] == [room.id]

    clock.now = T0 + timedelta(hours=1)
    ended = await service.end(room.id, HOST)
    assert ended.status is RoomStatus.ENDED
    assert (await service.get_room(room.id)).ended_at == ended.ended_at

    assert events.events == [(room.id, {"type": "room.started"}), (room.id, {"type": "room.ended"})]


async def test_another_host_cannot_start_or_end_my_room(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    for who in (OTHER_HOST, SHOPPER, MODERATOR):
        with pytest.raises(Forbidden):
            await service.start(room.id, who)
        with pytest.raises(Forbidden):
            await service.end(room.id, who)
    assert (await service.get_room(room.id)).status is RoomStatus.SCHEDULED
    assert events.events == []


async def test_admin_can_start_and_end_any_room(service: RoomService) -> None:
    room = await service.create_room(HOST, "Spring drop")
    assert (await service.start(room.id, ADMIN)).status is RoomStatus.LIVE
    assert (await service.end(room.id, ADMIN)).status is RoomStatus.ENDED


async def test_bad_transitions_conflict_and_publish_nothing(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    product_id = await _product(service)
    await service.start(room.id, HOST)
    await service.end(room.id, HOST)
    published = list(events.events)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: service.start(room.id, HOST),
        lambda: service.pin(room.id, product_id, HOST),
        lambda: service.set_slow_mode(room.id, 10, HOST),
    ]
    for attempt in attempts:
        with pytest.raises(Conflict) as error:
            await attempt()
        assert error.value.code == "invalid_room_state"
    assert events.events == published


async def test_a_start_or_end_sent_again_tells_the_viewers_its_first_try_did_not() -> None:
    events = FlakyEvents()  # Redis away for the first try of each
    rooms = MemoryRoomStore()
    clock = Clock(T0)
    service = RoomService(rooms, MemoryProductStore(), events, clock)
    room = await service.create_room(HOST, "Spring drop")
    events.away = True
    with pytest.raises(Unavailable):
        await service.start(room.id, HOST)  # stored live, but nobody was told
    events.away = False
    assert (await service.start(room.id, HOST)).status is RoomStatus.LIVE
    events.away = True
    with pytest.raises(Unavailable):
        await service.end(room.id, HOST)
    events.away = False
    first_end = (await rooms.get(room.id)).ended_at
    clock.advance(seconds=5)
    ended = await service.end(room.id, ADMIN)
    assert (ended.status, ended.ended_at) == (RoomStatus.ENDED, first_end)  # the first try's
    assert [event["type"] for _, event in events.events] == ["room.started", "room.ended"]


async def test_a_change_made_meanwhile_wins_and_is_not_announced(
    service: RoomService, rooms: StaleRoomStore, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    rooms.frozen = await rooms.get(room.id)  # this process read it while scheduled...
    stored = await MemoryRoomStore.get(rooms, room.id)
    stored.start(T0)
    await rooms.save(stored, expected_status=RoomStatus.SCHEDULED)  # ...another started it.

    with pytest.raises(Conflict):
        await service.start(room.id, HOST)
    assert events.events == []
    assert (await MemoryRoomStore.get(rooms, room.id)).started_at == T0


async def test_a_pin_made_while_the_room_starts_is_kept(
    service: RoomService, rooms: StaleRoomStore
) -> None:
    """The host's console starts the show and pins its first product at once: the start, read
    before the pin, must not write the room back without it."""
    room = await service.create_room(HOST, "Spring drop")
    product_id = await _product(service)
    rooms.frozen = await rooms.get(room.id)  # both read the room while scheduled, unpinned
    await service.pin(room.id, product_id, HOST)
    await service.start(room.id, HOST)
    rooms.frozen = None
    stored = await service.get_room(room.id)
    assert (stored.status, stored.pinned_product_id) == (RoomStatus.LIVE, product_id)


class FirstPublishHeld(RecordingEvents):
    """The first event's publish waits for `release`: a process slow to tell its pin."""

    def __init__(self) -> None:
        super().__init__()
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def publish_room_event(self, room_id: str, event: dict[str, Any], **how: Any) -> int:
        if not self.held.is_set():
            self.held.set()
            await self.release.wait()
        return await super().publish_room_event(room_id, event, **how)


async def test_of_two_pins_at_once_the_viewers_hear_the_stored_one_last() -> None:
    events, rooms = FirstPublishHeld(), MemoryRoomStore()
    service = RoomService(rooms, MemoryProductStore(), events, Clock(T0))
    room = await service.create_room(HOST, "Spring drop")
    first, second = await _product(service), await _product(service)
    slow = asyncio.create_task(service.pin(room.id, first, HOST))
    await events.held.wait()  # stored first, told last
    await service.pin(room.id, second, HOST)
    events.release.set()
    await slow
    told = [event["product"]["id"] for event in events.of_type("showcase.pinned")]
    assert told == [second] == [(await rooms.get(room.id)).pinned_product_id]


async def test_pin_publishes_the_product_summary(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    product_id = await _product(service)

    pinned_room, product = await service.pin(room.id, product_id, HOST)

    assert pinned_room.pinned_product_id == product_id == product.id
    assert (await service.get_room(room.id)).pinned_product_id == product_id
    assert events.events == [
        (
            room.id,
            {
                "type": "showcase.pinned",
                "product": {
                    "id": product_id,
                    "title": "Silk scarf",
                    "images": ["https://img.example/scarf.jpg"],
                    "price": {"amount": "12.50", "currency": "USD"},
                    "stock": 5,
                },
            },
        )
    ]
    assert await service.pinned_products([pinned_room]) == {product_id: product}


async def test_pin_unknown_product_changes_nothing(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    with pytest.raises(NotFound):
        await service.pin(room.id, "p_missing", HOST)
    with pytest.raises(Forbidden):
        await service.pin(room.id, await _product(service), OTHER_HOST)
    assert (await service.get_room(room.id)).pinned_product_id is None
    assert events.events == []


async def test_pin_another_sellers_product_is_refused(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    theirs = await _product(service, owner=OTHER_HOST)
    for who in (HOST, ADMIN):  # not even an admin puts another seller's goods in the showcase
        with pytest.raises(Forbidden) as refused:
            await service.pin(room.id, theirs, who)
        assert refused.value.code == "not_your_product"
    assert (await service.get_room(room.id)).pinned_product_id is None
    assert events.events == []
    # The host's own product, pinned by an admin, is fine.
    pinned_room, _ = await service.pin(room.id, await _product(service), ADMIN)
    assert pinned_room.pinned_product_id is not None


async def test_slow_mode_is_stored_then_announced(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop")
    updated = await service.set_slow_mode(room.id, 30, MODERATOR)

    assert updated.slow_mode_seconds == 30
    assert (await service.get_room(room.id)).slow_mode_seconds == 30
    assert events.events == [(room.id, {"type": "room.slow_mode", "seconds": 30})]

    with pytest.raises(InvalidInput):
        await service.set_slow_mode(room.id, 3601, HOST)
    with pytest.raises(Forbidden):
        await service.set_slow_mode(room.id, 5, OTHER_HOST)
    assert (await service.get_room(room.id)).slow_mode_seconds == 30


async def test_blocked_words_are_cleaned_stored_and_reloaded_privately(
    service: RoomService, events: RecordingEvents
) -> None:
    room = await service.create_room(HOST, "Spring drop", blocked_words=["scam"])
    assert room.blocked_words == ["scam"]

    updated = await service.set_blocked_words(room.id, [" Spam ", "spam", "", "fake"], HOST)

    assert updated.blocked_words == ["Spam", "fake"]
    assert (await service.get_room(room.id)).blocked_words == ["Spam", "fake"]
    assert events.controls == [(room.id, {"type": "settings_changed"})]
    assert events.events == []  # viewers never learn the list

    # Words that block the same lines are one: case, width, accents and joiners aside.
    same = ["scam", "SCAM", "\uff53cam", "sc\u00e5m", "sc\u200dam", "scam*", "*scam"]
    updated = await service.set_blocked_words(room.id, same, HOST)
    assert updated.blocked_words == ["scam", "scam*", "*scam"]

    with pytest.raises(Forbidden):
        await service.set_blocked_words(room.id, [], SHOPPER)
    with pytest.raises(InvalidInput):
        await service.set_blocked_words(room.id, ["x" * 51], HOST)
    with pytest.raises(InvalidInput):
        await service.set_blocked_words(room.id, [f"w{i}" for i in range(201)], HOST)


async def test_unknown_room_is_not_found(service: RoomService) -> None:
    with pytest.raises(NotFound):
        await service.get_room("r_missing")
    with pytest.raises(NotFound):
        await service.start("r_missing", ADMIN)
    with pytest.raises(NotFound):
        await service.get_product("p_missing")
