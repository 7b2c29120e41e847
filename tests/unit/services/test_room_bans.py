"""Claims of a user banned from the room are refused, but for a claim sent again, which gets its
order back; the room's bans are read once a second."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from server.adapters.memory import MemoryRoomStore
from server.domain.errors import Conflict, Forbidden, Unavailable
from server.domain.identity import Identity, Role, scoped_key
from server.domain.orders import Order
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
    bans = RoomBans(rooms)
    answers = await asyncio.gather(*(bans.is_banned("r1", f"u{n}") for n in range(100)))
    assert not any(answers)
    assert await bans.is_banned("r1", "troll")
    assert rooms.reads == 1


async def test_a_ban_reaches_claims_once_the_list_is_a_period_old() -> None:
    rooms = CountingRooms()
    bans = RoomBans(rooms, fresh_for=0.05)
    assert not await bans.is_banned("r1", "troll")
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    assert not await bans.is_banned("r1", "troll")  # read a moment ago
    await asyncio.sleep(0.06)
    assert await bans.is_banned("r1", "troll")  # stale: the claim waits for the read
    await asyncio.sleep(1.0)  # a quiet room: its list grows old
    await rooms.ban("r1", "spammer", by="host-1", at=T0)
    assert await bans.is_banned("r1", "spammer")  # the first claim after a quiet spell too


async def test_the_last_list_stands_while_the_database_is_away() -> None:
    rooms = CountingRooms()
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    bans = RoomBans(rooms, fresh_for=0.0)
    assert await bans.is_banned("r1", "troll")
    rooms.away = True
    assert await bans.is_banned("r1", "troll")
    with pytest.raises(Unavailable):  # never read: nothing to stand on
        await bans.is_banned("r2", "troll")


class HangingRooms(CountingRooms):
    """A room store whose reads of the bans hang while `hung` is set (a frozen database)."""

    def __init__(self) -> None:
        super().__init__()
        self.hung = False

    async def banned_users(self, room_id: str) -> frozenset[str]:
        if not self.hung:
            return await super().banned_users(room_id)
        self.reads += 1
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_while_the_database_hangs_claims_wait_a_moment_then_go_by_the_last_list() -> None:
    rooms = HangingRooms()
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    bans = RoomBans(rooms, fresh_for=0.05, stale_wait=0.05)
    assert await bans.is_banned("r1", "troll")  # read: 1
    rooms.hung = True
    await asyncio.sleep(0.06)
    waiting = [bans.is_banned("r1", "troll") for _ in range(5)]  # one read, which hangs
    assert all(await asyncio.wait_for(asyncio.gather(*waiting), timeout=1.0))
    for _ in range(5):  # past the wait, at once
        assert await asyncio.wait_for(bans.is_banned("r1", "troll"), timeout=1.0)
    assert rooms.reads == 2


async def test_a_failed_read_is_logged_once_and_tried_again_a_period_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rooms = CountingRooms()
    await rooms.ban("r1", "troll", by="host-1", at=T0)
    bans = RoomBans(rooms, fresh_for=0.05)
    assert await bans.is_banned("r1", "troll")  # read: 1
    rooms.away = True
    await asyncio.sleep(0.06)
    stale = await asyncio.gather(*(bans.is_banned("r1", "troll") for _ in range(20)))
    assert all(stale)  # one read (2), which fails
    await asyncio.sleep(0.02)
    for _ in range(20):  # the list read last stands for another period, without a read
        assert await bans.is_banned("r1", "troll")
    assert rooms.reads == 2
    assert [r.message for r in caplog.records].count("room_bans_stale") == 1
    await asyncio.sleep(0.06)
    assert await bans.is_banned("r1", "troll")  # a period later: read again (3)
    await asyncio.sleep(0.02)
    assert rooms.reads == 3


def banning(shop: Shop) -> OrderService:
    return OrderService(
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


async def test_a_banned_buyer_sending_a_claim_again_gets_its_order_and_no_more(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=2)
    first, _ = await shop.claim(offer, buyer(1), "k")
    # A claim that reserved and then failed to write its order (its answer: "send it again").
    await shop.stock.claim(offer.id, "buyer-1", 1, scoped_key("buyer-1", "k-failed"), shop.clock())
    await shop.rooms.ban(shop.room_id, "buyer-1", by="host-1", at=T0)
    orders = banning(shop)

    async def claim(key: str = "k", quantity: int = 1) -> tuple[Order, bool]:
        return await orders.claim(
            offer.id, buyer(1), quantity=quantity, idempotency_key=key, address=ADDRESS
        )

    assert await claim() == (first, False)
    with pytest.raises(Conflict):  # the same key for another claim: as for anyone
        await claim(quantity=2)
    late, created = await claim(key="k-failed")  # its units were held for it
    assert created
    with pytest.raises(Forbidden) as refused:
        await claim(key="k2")
    assert refused.value.code == "banned"
    assert await shop.stock.remaining(offer.id) == 1
    assert late.id != first.id


async def test_a_banned_buyer_cannot_claim_and_takes_nothing(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    await shop.rooms.ban(shop.room_id, "buyer-1", by="host-1", at=T0)
    orders = banning(shop)
    with pytest.raises(Forbidden) as refused:
        await orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "banned"
    assert await shop.stock.remaining(offer.id) == 3
    _, created = await orders.claim(
        offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS
    )
    assert created


@pytest.mark.parametrize("role", [Role.MODERATOR, Role.ADMIN])
async def test_a_ban_does_not_hold_the_platforms_staff(shop: Shop, role: Role) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    await shop.rooms.ban(shop.room_id, "staff-1", by="mod-1", at=T0)
    _, created = await banning(shop).claim(
        offer.id, Identity("staff-1", role), quantity=1, idempotency_key="k", address=ADDRESS
    )
    assert created
