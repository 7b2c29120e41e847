"""Booking a product's stock and settling an ended offer, through the services on a real Redis
and a real MongoDB (the unit tests run the same on the memory adapters): the unsold units and
a dead claimer's reservation go back to the product, its sold units stay sold."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from server.adapters.mongo.offers import MongoOfferStore
from server.adapters.mongo.orders import MongoOrderStore
from server.adapters.mongo.stores import MongoProductStore, MongoRoomStore
from server.adapters.redis_reservations import RedisStockReservations
from server.domain.errors import Conflict
from server.domain.money import Money
from server.domain.offers import LATE_ORDERS
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.services.rooms import RoomService
from tests.fakes import Clock, RecordingEvents
from tests.unit.services.shop import ADDRESS, HOST, buyer

pytestmark = pytest.mark.mongo


@pytest.fixture
async def stock(clean_redis: str) -> AsyncIterator[RedisStockReservations]:
    reservations = RedisStockReservations(clean_redis)
    yield reservations
    await reservations.close()


async def test_a_settled_offer_gives_back_its_unsold_units_on_real_backends(
    mongo_db: Any, stock: RedisStockReservations
) -> None:
    # The real clock's time: Redis expires an offer's keys a day after its end.
    clock, events = Clock(datetime.now(UTC)), RecordingEvents()
    rooms, products = MongoRoomStore(mongo_db), MongoProductStore(mongo_db)
    offers_store, orders_store = MongoOfferStore(mongo_db), MongoOrderStore(mongo_db)
    room_service = RoomService(rooms, products, events, clock)
    product = await room_service.create_product(
        HOST, title="Serum", price=Money(Decimal("24.90"), "USD"), stock=10, images=[]
    )
    room = await room_service.create_room(HOST, "Show")
    await room_service.start(room.id, HOST)
    offers = OfferService(offers_store, orders_store, rooms, products, stock, events, clock)
    orders = OrderService(
        offers_store, orders_store, products, stock, offers, events.send_private, clock, rooms=rooms
    )

    async def launch(quantity: int) -> str:
        launched = await offers.launch(
            room.id,
            HOST,
            product_id=product.id,
            price=Money(Decimal("9.90"), "USD"),
            quantity=quantity,
            per_user_limit=1,
            countdown_seconds=0,
            duration_seconds=3600,
        )
        return launched.offer.id

    first = await launch(10)
    await orders.claim(first, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    # A claimer that died after reserving, before writing its order.
    await stock.claim(first, "buyer-2", 1, "buyer-2:k", clock())
    with pytest.raises(Conflict) as refused:
        await launch(1)
    assert refused.value.code == "insufficient_stock"
    await offers.stop(first, HOST)
    clock.advance(seconds=LATE_ORDERS.total_seconds() - 1)
    assert await orders.settle_due() == 0
    clock.advance(seconds=1)
    assert await orders.settle_due() == 1
    assert (await offers_store.get(first)).settled_at is not None
    with pytest.raises(Conflict) as expired:  # the dead claimer's retry, too late
        await orders.claim(first, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    assert expired.value.code == "claim_expired"
    await launch(9)  # all but the one unit sold
    with pytest.raises(Conflict):
        await launch(1)
    await orders_store.close()
    await offers.close()
