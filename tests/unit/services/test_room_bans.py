"""Claims of a user banned from the room are refused; the room's bans are read once a second."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from server.adapters.memory import MemoryRoomStore
from server.domain.errors import Forbidden, Unavailable
from server.services.orders import OrderService
from server.services.room_bans import RoomBans
from tests.unit.services.shop import ADDRESS, Shop, buyer

T0 = datetime.fromisoformat("2026-11-29T12:00:00+00:00")


class CountingRooms:
    """A room store that counts its reads of the bans, and can be made to fail them."""

    def __init__(self) -> None:
        self.shared = MemoryRoomStore()
        self.reads = 0
        self.away = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    async def banned_users(self, room_id: str) -> frozenset[str]:
        self.reads += 1
        await asyncio.sleep(0.01)  # a round trip
        if self.away:
            raise Unavailable("the database is unreachable, try again")
        return await self.shared.banned_users(room_id)


async def test_claims_arriving_together_read_the_bans_once() -> None:
    rooms = CountingRooms()
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    bans = RoomBans(rooms)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(bans.is_banned("r1", f"u{n}") for n in range(100)))
    assert not any(answers)
    assert await bans.is_banned("r1", "troll")
    assert rooms.reads == 1


async def test_a_ban_reaches_claims_once_the_list_is_a_period_old() -> None:
    rooms = CountingRooms()
    bans = RoomBans(rooms, fresh_for=0.05)  # type: ignore[arg-type]
    assert not await bans.is_banned("r1", "troll")
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    assert not await bans.is_banned("r1", "troll")  # read a moment ago
    await asyncio.sleep(0.06)
    assert await bans.is_banned("r1", "troll")


async def test_the_last_list_stands_while_the_database_is_away() -> None:
    rooms = CountingRooms()
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    bans = RoomBans(rooms, fresh_for=0.0)  # type: ignore[arg-type]
    assert await bans.is_banned("r1", "troll")
    rooms.away = True
    assert await bans.is_banned("r1", "troll")
    with pytest.raises(Unavailable):  # never read: nothing to stand on
        await bans.is_banned("r2", "troll")


async def test_while_the_database_is_away_claims_do_not_each_wait_for_a_read() -> None:
    rooms = CountingRooms()
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    bans = RoomBans(rooms, fresh_for=10.0)  # type: ignore[arg-type]
    assert await bans.is_banned("r1", "troll")
    bans = RoomBans(rooms, fresh_for=0.2)  # type: ignore[arg-type]
    assert await bans.is_banned("r1", "troll")  # read: 2
    rooms.away = True
    await asyncio.sleep(0.25)
    assert await bans.is_banned("r1", "troll")  # stale: a read, which fails (3)
    for _ in range(5):  # the list read last stands for another period, without a read
        assert await bans.is_banned("r1", "troll")
    assert rooms.reads == 3


async def test_a_banned_buyer_cannot_claim_and_takes_nothing(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    await shop.rooms.ban(shop.room_id, "buyer-1", by="host-1", at=T0)
    orders = OrderService(
        shop.offers_store,
        shop.orders_store,
        shop.products,
        shop.stock,
        shop.offers,
        shop.events.send_private,
        shop.clock,
        rooms=shop.rooms,
        bans=RoomBans(shop.rooms),
    )
    with pytest.raises(Forbidden) as refused:
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "banned"
    assert await shop.stock.remaining(offer.id) == 3
    _, created = await orders.claim(
        offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS
    )
    assert created
