"""Booking a product's stock, settling an ended offer and settling an order written late,
through the services on a real Redis and a real MongoDB (the unit tests run the same on the
memory adapters; the room's events, which these tests do not look at, are only recorded): the
unsold units and a dead claimer's reservation go back to the product, its sold units stay sold,
and an order landing after its units were sold again (or after a rebuild of its offer read the
orders without it) is cancelled; a stock rebuilt from the orders counts the paid ones' units."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
import redis

from server.adapters.mongo.offers import MongoOfferStore
from server.adapters.mongo.orders import MongoOrderStore
from server.adapters.mongo.stores import MongoProductStore, MongoRoomStore
from server.adapters.redis_reservations import RedisStockReservations
from server.domain.errors import Conflict, Unavailable
from server.domain.money import Money
from server.domain.offers import LATE_ORDERS, ORPHAN_AFTER
from server.domain.orders import HOLDS_STOCK, OrderStatus
from server.ports import OrderStore
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.services.rooms import RoomService
from tests.fakes import Clock, RecordingEvents
from tests.unit.services.shop import ADDRESS, HOST, HeldWrites, buyer, move_in_store

pytestmark = pytest.mark.mongo


@dataclass
class Shop:
    """A live room with a product, on real backends; `process` gives a server process."""

    db: Any
    stock: RedisStockReservations
    # The real clock's time: Redis expires an offer's keys a day after its end.
    clock: Clock = field(default_factory=lambda: Clock(datetime.now(UTC)))
    events: RecordingEvents = field(default_factory=RecordingEvents)
    room_id: str = ""
    product_id: str = ""

    def __post_init__(self) -> None:
        self.rooms, self.products = MongoRoomStore(self.db), MongoProductStore(self.db)
        self.offers_store, self.orders_store = MongoOfferStore(self.db), MongoOrderStore(self.db)

    def process(
        self, orders_store: OrderStore | None = None, clock_ahead: timedelta = timedelta(0)
    ) -> tuple[OfferService, OrderService]:
        """A server process's services (writing its orders through `orders_store`), its
        clock `clock_ahead` of the others'."""
        orders_store = orders_store or self.orders_store

        def clock() -> datetime:
            return self.clock() + clock_ahead

        offers = OfferService(
            self.offers_store,
            orders_store,
            self.rooms,
            self.products,
            self.stock,
            self.events,
            clock,
        )
        orders = OrderService(
            self.offers_store,
            orders_store,
            self.products,
            self.stock,
            offers,
            self.events.send_private,
            clock,
            rooms=self.rooms,
        )
        return offers, orders

    async def claim_written_late(
        self, offer_id: str, clock_ahead: timedelta = timedelta(0)
    ) -> HeldWrites:
        """Buyer 1's claim through a process whose order write misses its deadline (the buyer
        hears "try again"); the write, held, lands when the test says."""
        writes = HeldWrites(self.orders_store)
        _, late_claimer = self.process(cast(OrderStore, writes), clock_ahead)
        with pytest.raises(Unavailable):
            await late_claimer.claim(
                offer_id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
            )
        return writes

    async def launch(self, offers: OfferService, quantity: int) -> str:
        launched = await offers.launch(
            self.room_id,
            HOST,
            product_id=self.product_id,
            price=Money(Decimal("9.90"), "USD"),
            quantity=quantity,
            per_user_limit=1,
            countdown_seconds=0,
            duration_seconds=3600,
        )
        return launched.offer.id


@pytest.fixture
async def shop(mongo_db: Any, clean_redis: str) -> AsyncIterator[Shop]:
    shop = Shop(mongo_db, RedisStockReservations(clean_redis))
    room_service = RoomService(shop.rooms, shop.products, shop.events, shop.clock)
    product = await room_service.create_product(
        HOST, title="Serum", price=Money(Decimal("24.90"), "USD"), stock=10, images=[]
    )
    room = await room_service.create_room(HOST, "Show")
    await room_service.start(room.id, HOST)
    shop.room_id, shop.product_id = room.id, product.id
    yield shop
    await shop.orders_store.close()
    await shop.stock.close()


async def test_a_settled_offer_gives_back_its_unsold_units_on_real_backends(shop: Shop) -> None:
    offers, orders = shop.process()
    first = await shop.launch(offers, 10)
    await orders.claim(first, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    # A claimer that died after reserving, before writing its order.
    await shop.stock.claim(first, "buyer-2", 1, "buyer-2:k", shop.clock())
    with pytest.raises(Conflict) as refused:
        await shop.launch(offers, 1)
    assert refused.value.code == "insufficient_stock"
    await offers.stop(first, HOST)
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds() - 1)
    assert await orders.settle_due() == 0
    shop.clock.advance(seconds=1)
    assert await orders.settle_due() == 1
    assert (await shop.offers_store.get(first)).settled_at is not None
    with pytest.raises(Conflict) as expired:  # the dead claimer's retry, too late
        await orders.claim(first, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    assert expired.value.code == "claim_expired"
    await shop.launch(offers, 9)  # all but the one unit sold
    with pytest.raises(Conflict):
        await shop.launch(offers, 1)
    await offers.close()


async def test_an_order_written_late_is_settled_after_its_reaper_died(shop: Shop) -> None:
    offers, reaper = shop.process()
    offer_id = await shop.launch(offers, 1)
    writes = await shop.claim_written_late(offer_id)
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await reaper.reap_orphans(offer_id) == 1  # no order under the key: released
    sold, _ = await reaper.claim(
        offer_id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS
    )
    await writes.land()  # the late write: two orders hold the one unit
    # The reaper's process is gone; another finds the order under the key it released.
    _, survivor = shop.process()
    assert await survivor.settle_late_orders() == 1
    orders = await shop.orders_store.of_offer(offer_id)
    assert [o.id for o in orders if o.status in HOLDS_STOCK] == [sold.id]
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    assert await shop.stock.remaining(offer_id) == 0
    assert await survivor.settle_late_orders() == 0  # settled once
    await offers.close()


async def test_an_order_written_late_after_a_rebuild_is_settled_by_another_process(
    shop: Shop, clean_redis: str
) -> None:
    offers, rebuilder = shop.process()
    offer_id = await shop.launch(offers, 2)
    writes = await shop.claim_written_late(offer_id)
    with redis.Redis.from_url(clean_redis) as admin:
        admin.flushall()  # Redis lost its data
    sold = []
    for n in (2, 3):  # the first claim rebuilds the stock from orders without buyer 1's
        order, _ = await rebuilder.claim(
            offer_id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS
        )
        sold.append(order.id)
    await writes.land()  # the late write: three orders hold the two units
    _, survivor = shop.process()  # neither the claimer's process nor the rebuilder's
    assert await survivor.settle_late_orders() == 1
    orders = await shop.orders_store.of_offer(offer_id)
    assert sorted(o.id for o in orders if o.status in HOLDS_STOCK) == sorted(sold)
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    assert await shop.stock.remaining(offer_id) == 0
    assert await survivor.settle_late_orders() == 0  # settled once
    await offers.close()


async def test_redis_lost_twice_keeps_the_order_answered_between_on_real_backends(
    shop: Shop, clean_redis: str
) -> None:
    """An order that landed after a rebuild's read must not take the unit of one the rebuilt
    stock sold and answered, when Redis loses the offer again before a round checks them;
    even when the late order's process dated it after the read, and before the answered one."""
    offers, rebuilder = shop.process()
    offer_id = await shop.launch(offers, 1)
    # Buyer 1 hears "try again"; its process's clock runs 1.5 s ahead.
    writes = await shop.claim_written_late(offer_id, clock_ahead=timedelta(seconds=1.5))
    shop.clock.advance(seconds=1)
    with redis.Redis.from_url(clean_redis) as admin:
        admin.flushall()  # Redis loses the offer
    await offers.rebuild(offer_id)  # reads the orders, and lets claims in
    shop.clock.advance(seconds=1)
    answered, created = await rebuilder.claim(
        offer_id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS
    )
    assert created
    await writes.land()  # buyer 1's order, older, lands
    with redis.Redis.from_url(clean_redis) as admin:
        admin.flushall()  # lost again, before a round checked it
    _, survivor = shop.process()
    for _ in range(2):  # rebuilds the offer (its check finds it lost), then checks its orders
        await survivor.settle_late_orders()
    orders = await shop.orders_store.of_offer(offer_id)
    assert [o.id for o in orders if o.status in HOLDS_STOCK] == [answered.id]
    await offers.close()


async def test_a_rebuild_on_real_backends_counts_the_units_of_paid_orders(
    shop: Shop, clean_redis: str
) -> None:
    """Paid orders hold their units as pending ones do: Redis lost, the stock rebuilt from
    MongoDB's orders does not sell them again."""
    offers, orders = shop.process()
    offer_id = await shop.launch(offers, 3)
    paid, _ = await orders.claim(
        offer_id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    await orders.claim(offer_id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await move_in_store(shop.orders_store, paid.id, OrderStatus.PAID, at=shop.clock())
    with redis.Redis.from_url(clean_redis) as admin:
        admin.flushall()  # Redis loses the offer

    await offers.rebuild(offer_id)

    assert await shop.stock.remaining(offer_id) == 1
    with pytest.raises(Conflict) as refused:  # the paid unit still counts against the limit
        await orders.claim(offer_id, buyer(1), quantity=1, idempotency_key="k2", address=ADDRESS)
    assert refused.value.code == "limit_reached"
    await orders.claim(offer_id, buyer(3), quantity=1, idempotency_key="k", address=ADDRESS)
    with pytest.raises(Conflict) as sold_out:
        await orders.claim(offer_id, buyer(4), quantity=1, idempotency_key="k", address=ADDRESS)
    assert sold_out.value.code == "sold_out"
    await offers.close()
