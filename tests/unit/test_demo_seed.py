"""The demo's seeding (`seed_demo`), run again and again on one database: its live room with a
running offer each time, whatever the demo host did with its token meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from pydantic import SecretStr

from channels.broker_memory import MemoryBroker, MemoryBus
from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.memory_orders import MemoryOfferStore, MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.app import Backends, create_app
from server.container import Container
from server.demo import DEMO_HOST, DEMO_ROOM_TITLE, seed_demo
from server.domain.money import Money
from server.domain.rooms import MAX_LIVE_ROOMS_PER_HOST, RoomStatus
from server.settings import Settings


@pytest.fixture
async def container() -> AsyncIterator[Container]:
    backends = Backends(
        MemoryProductStore(),
        MemoryRoomStore(),
        MemoryBroker(MemoryBus()),
        MemoryOfferStore(),
        MemoryOrderStore(),
        MemoryStockReservations(),
    )
    app = create_app(Settings(secret=SecretStr("test-only-demo-seed-secret")), backends=backends)
    async with app.app.router.lifespan_context(app.app):
        yield app.app.state.container


async def assert_live_with_an_offer(container: Container, room_id: str) -> None:
    room = await container.room_service.get_room(room_id)
    assert (room.status, room.host_id) == (RoomStatus.LIVE, DEMO_HOST.user_id)
    assert room.pinned_product_id is not None
    assert await container.offer_service.open_in_room(room_id)


async def test_the_demo_room_is_made_once_and_kept(container: Container) -> None:
    first = await seed_demo(container)
    assert first.title == DEMO_ROOM_TITLE
    await assert_live_with_an_offer(container, first.id)
    assert (await seed_demo(container)).id == first.id


async def test_a_demo_room_whose_offer_ended_on_a_product_of_little_stock_gets_a_new_one(
    container: Container,
) -> None:
    """Restarted after its offer was stopped and a product of little stock pinned with the
    printed token: the demo comes up all the same, on new products."""
    room = await seed_demo(container)
    (offer, _), *_ = await container.offer_service.open_in_room(room.id)
    await container.offer_service.stop(offer.id, DEMO_HOST)
    small = await container.room_service.create_product(
        DEMO_HOST, title="Small lot", price=Money(Decimal("5.00"), "USD"), stock=50, images=[]
    )
    await container.room_service.pin(room.id, small.id, DEMO_HOST)
    again = await seed_demo(container)
    assert again.id == room.id
    assert again.pinned_product_id not in (small.id, room.pinned_product_id)
    await assert_live_with_an_offer(container, room.id)


async def test_a_demo_host_with_as_many_rooms_live_as_one_may_shows_the_newest(
    container: Container,
) -> None:
    """Its room ended, and five others started with the printed token: none can start."""
    seeded = await seed_demo(container)
    rooms = container.room_service
    await rooms.end(seeded.id, DEMO_HOST)
    others = []
    for n in range(MAX_LIVE_ROOMS_PER_HOST):
        room = await rooms.create_room(DEMO_HOST, f"side show {n}")
        await rooms.start(room.id, DEMO_HOST)
        others.append(room.id)
        await asyncio.sleep(0.002)  # created in turn: the newest is the last
    shown = await seed_demo(container)
    assert shown.id == others[-1]
    await assert_live_with_an_offer(container, shown.id)
    assert (await seed_demo(container)).id == shown.id  # and again, as it is
