"""Offers, claims and orders through the services, with the in-memory adapters."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.memory_orders import MemoryOfferStore, MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Conflict, Forbidden, NotFound, Unavailable
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.offers import EndReason, FlashOffer
from server.domain.orders import Address, Order, OrderStatus
from server.ports import OrderStore, StockReservations
from server.services.housekeeping import Housekeeper
from server.services.offers import STOCK_ANNOUNCE_SECONDS, OfferService
from server.services.orders import ORPHAN_AFTER, OrderService
from server.services.rooms import RoomService
from tests.fakes import Clock, RecordingEvents

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOST = Identity("host-1", Role.HOST)
ADDRESS = Address.clean(
    name="Ana", line1="Rua 1", city="Lisboa", postal_code="1000-001", country="PT"
)


def buyer(n: int) -> Identity:
    return Identity(f"buyer-{n}", Role.SHOPPER)


@dataclass
class Shop:
    clock: Clock
    events: RecordingEvents
    stock: MemoryStockReservations
    orders_store: MemoryOrderStore
    offers: OfferService
    orders: OrderService
    room_id: str
    product_id: str
    offers_store: MemoryOfferStore
    rooms: MemoryRoomStore
    products: MemoryProductStore

    async def launch(self, quantity: int = 3, limit: int = 2, countdown: int = 0) -> FlashOffer:
        return await self.offers.launch(
            self.room_id,
            HOST,
            product_id=self.product_id,
            price=Money(Decimal("9.90"), "USD"),
            quantity=quantity,
            per_user_limit=limit,
            countdown_seconds=countdown,
            duration_seconds=60,
        )

    async def claim(
        self, offer: FlashOffer, who: Identity, key: str, quantity: int = 1
    ) -> tuple[Order, bool]:
        return await self.orders.claim(
            offer.id, who, quantity=quantity, idempotency_key=key, address=ADDRESS
        )


@pytest.fixture
async def shop() -> Shop:
    clock, events = Clock(T0), RecordingEvents()
    rooms, products = MemoryRoomStore(), MemoryProductStore()
    offers_store, orders_store = MemoryOfferStore(), MemoryOrderStore()
    stock = MemoryStockReservations()
    room_service = RoomService(rooms, products, events, clock)
    product = await room_service.create_product(
        HOST, title="Serum", price=Money(Decimal("24.90"), "USD"), stock=50, images=[]
    )
    room = await room_service.create_room(HOST, "Show")
    await room_service.start(room.id, HOST)
    offers = OfferService(offers_store, orders_store, rooms, products, stock, events, clock)
    orders = OrderService(
        offers_store, orders_store, products, stock, offers, events.send_private, clock
    )
    return Shop(
        clock,
        events,
        stock,
        orders_store,
        offers,
        orders,
        room.id,
        product.id,
        offers_store,
        rooms,
        products,
    )


async def settle() -> None:
    """Let the coalesced stock announcements run."""
    await asyncio.sleep(STOCK_ANNOUNCE_SECONDS + 0.05)


async def test_launch_tells_the_room(shop: Shop) -> None:
    offer = await shop.launch(quantity=3)
    started = shop.events.of_type("offer.started")
    assert len(started) == 1
    assert started[0]["offer"]["id"] == offer.id
    assert started[0]["offer"]["remaining"] == 3
    assert started[0]["offer"]["price"] == {"amount": "9.90", "currency": "USD"}


async def test_only_the_host_launches(shop: Shop) -> None:
    with pytest.raises(Forbidden):
        await shop.offers.launch(
            shop.room_id,
            buyer(1),
            product_id=shop.product_id,
            price=Money(Decimal("1"), "USD"),
            quantity=1,
            per_user_limit=1,
            countdown_seconds=0,
            duration_seconds=60,
        )


async def test_a_claim_creates_a_pending_order_and_tells_the_buyer(shop: Shop) -> None:
    offer = await shop.launch()
    order, created = await shop.claim(offer, buyer(1), "k1")
    assert created
    assert order.status is OrderStatus.PENDING_PAYMENT
    assert order.total == Money(Decimal("9.90"), "USD")
    assert order.product["title"] == "Serum"
    assert [u for u, e in shop.events.private if e["type"] == "order.updated"] == ["buyer-1"]
    assert await shop.stock.remaining(offer.id) == 2


async def test_a_retried_claim_returns_the_same_order_and_takes_no_stock(shop: Shop) -> None:
    offer = await shop.launch()
    first, _ = await shop.claim(offer, buyer(1), "k1")
    again, created = await shop.claim(offer, buyer(1), "k1")
    assert (again.id, created) == (first.id, False)
    assert await shop.stock.remaining(offer.id) == 2
    # The same key from another buyer is another claim.
    other, created = await shop.claim(offer, buyer(2), "k1")
    assert created
    assert other.id != first.id


async def test_sold_out_limit_and_not_active_are_distinct(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=2)
    await shop.claim(offer, buyer(1), "a", quantity=2)
    with pytest.raises(Conflict) as limit:
        await shop.claim(offer, buyer(1), "b")
    assert limit.value.code == "limit_reached"
    await shop.claim(offer, buyer(2), "c")
    with pytest.raises(Conflict) as sold:
        await shop.claim(offer, buyer(3), "d")
    assert sold.value.code == "sold_out"
    later = await shop.launch(countdown=30)
    with pytest.raises(Conflict) as early:
        await shop.claim(later, buyer(1), "e")
    assert early.value.code == "offer_not_active"


async def test_selling_out_ends_the_offer_once_and_announces_zero(shop: Shop) -> None:
    offer = await shop.launch(quantity=2, limit=1)
    await asyncio.gather(*(shop.claim(offer, buyer(n), f"k{n}") for n in range(2)))
    await settle()
    assert shop.events.of_type("offer.stock")[-1]["remaining"] == 0
    ended = shop.events.of_type("offer.ended")
    assert ended == [{"type": "offer.ended", "offer_id": offer.id, "reason": "sold_out"}]


def second_process(
    shop: Shop, orders: OrderStore | None = None, stock: StockReservations | None = None
) -> OrderService:
    """Another server process: its own services over the same stores, reservations and room."""
    offers = OfferService(
        shop.offers_store,
        shop.orders_store,
        shop.rooms,
        shop.products,
        stock or shop.stock,
        shop.events,
        shop.clock,
    )
    return OrderService(
        shop.offers_store,
        orders or shop.orders_store,
        shop.products,
        stock or shop.stock,
        offers,
        shop.events.send_private,
        shop.clock,
    )


async def test_processes_claiming_together_keep_one_stock_cadence_for_the_room(
    shop: Shop,
) -> None:
    other_orders = second_process(shop)
    offer = await shop.launch(quantity=50, limit=1)
    for n in range(40):
        service = shop.orders if n % 2 else other_orders
        await service.claim(offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS)
        await asyncio.sleep(0.02)
    await asyncio.sleep(3 * STOCK_ANNOUNCE_SECONDS)  # the losers' last tries
    stock = [
        (at, event["remaining"])
        for (_, event), at in zip(shop.events.events, shop.events.published_at, strict=True)
        if event["type"] == "offer.stock"
    ]
    # One announcement per period for the room, not one per process; the last change is heard.
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(stock)]
    assert min(gaps) >= 0.9 * STOCK_ANNOUNCE_SECONDS
    announced = [remaining for _, remaining in stock]
    assert announced == sorted(announced, reverse=True)
    assert announced[-1] == 10


async def test_a_process_that_loses_the_stock_gate_still_announces_its_change(
    shop: Shop,
) -> None:
    other = second_process(shop)
    offer = await shop.launch(quantity=50, limit=1)
    await shop.claim(offer, buyer(1), "k")  # announced at once: the gate is this process's
    await asyncio.sleep(0.05)
    await other.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(2 * STOCK_ANNOUNCE_SECONDS)  # the other process tries again, and wins
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [49, 48]


async def test_the_last_unit_is_announced_at_once_past_the_cadence_and_the_gate(
    shop: Shop,
) -> None:
    other = second_process(shop)
    offer = await shop.launch(quantity=4, limit=1)
    await shop.claim(offer, buyer(1), "k")  # 3 left: announced at once, the gate is taken
    await asyncio.sleep(0.01)
    await shop.claim(offer, buyer(2), "k")  # 2 left: waits for the next period
    await asyncio.sleep(0.05)
    # 1 left, from the process that does not hold the gate, within the same period.
    await other.claim(offer.id, buyer(3), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [3, 1]
    await shop.claim(offer, buyer(4), "k")
    await asyncio.sleep(0.05)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [3, 1, 0]
    assert len(shop.events.of_type("offer.ended")) == 1


class SlowReads:
    """Another process's view of the same reservations, whose reads of the stock come back a
    moment after they were made (a busy event loop)."""

    def __init__(self, shared: MemoryStockReservations) -> None:
        self._shared = shared
        self.delay = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def remaining(self, offer_id: str) -> int:
        figure = await self._shared.remaining(offer_id)
        await asyncio.sleep(self.delay)
        return figure


async def test_a_figure_read_before_the_end_and_sent_after_it_is_dropped(shop: Shop) -> None:
    slow = SlowReads(shop.stock)
    other = second_process(shop, stock=cast(StockReservations, slow))
    offer = await shop.launch(quantity=3, limit=1)
    await shop.claim(offer, buyer(1), "k")
    slow.delay = 0.2
    # 1 left, read by the slow process, whose announcement reaches the room after...
    await other.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)
    await shop.claim(offer, buyer(3), "k")  # ... this process sold the last unit and ended it
    await settle()
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds[-2:] == [("offer.stock", 0), ("offer.ended", None)]
    assert ("offer.stock", 1) not in kinds


async def test_a_change_made_while_its_figure_is_on_the_way_is_announced_too(shop: Shop) -> None:
    slow = SlowReads(shop.stock)
    other = second_process(shop, stock=cast(StockReservations, slow))
    offer = await shop.launch(quantity=10, limit=1)
    slow.delay = 0.1
    await other.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(0.05)  # 9 is read and on its way
    await other.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    await asyncio.sleep(2 * STOCK_ANNOUNCE_SECONDS + 0.3)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [9, 8]


async def test_the_end_is_told_even_when_its_stock_figure_cannot_be(shop: Shop) -> None:
    publish = shop.events.publish_room_event

    async def refusing_stock(room_id: str, event: dict[str, Any], **fence: Any) -> int:
        if event["type"] == "offer.stock":
            raise Unavailable("live events are unavailable, try again")
        return await publish(room_id, event, **fence)

    shop.events.publish_room_event = refusing_stock  # type: ignore[method-assign]
    offer = await shop.launch(quantity=1, limit=1)
    await shop.claim(offer, buyer(1), "k")
    await asyncio.sleep(0.05)
    ended = shop.events.of_type("offer.ended")
    assert ended == [{"type": "offer.ended", "offer_id": offer.id, "reason": "sold_out"}]


async def test_a_change_as_an_announcement_returns_is_announced_too(shop: Shop) -> None:
    offer = await shop.launch(quantity=10, limit=5)
    await shop.claim(offer, buyer(1), "k")  # 9, at once
    await asyncio.sleep(STOCK_ANNOUNCE_SECONDS + 0.05)
    publish = shop.events.publish_room_event
    last_figure_out = asyncio.Event()

    async def publish_then_note(room_id: str, event: dict[str, Any], **fence: Any) -> int:
        seq = await publish(room_id, event, **fence)
        if event.get("remaining") == 8:
            last_figure_out.set()
        return seq

    shop.events.publish_room_event = publish_then_note  # type: ignore[method-assign]
    await shop.claim(offer, buyer(2), "k")  # 8: its announcement reads and publishes
    await last_figure_out.wait()
    # The announcement has returned; its done callback has not run yet. A reservation's answer
    # lands in this same pass, and the claim tells the offers so, as OrderService.claim does.
    reserved = await shop.stock.claim(offer.id, "buyer-3", 1, "buyer-3:k", shop.clock())
    shop.offers.stock_moved(offer, reserved.remaining)
    await asyncio.sleep(2 * STOCK_ANNOUNCE_SECONDS + 0.1)
    assert [event["remaining"] for event in shop.events.of_type("offer.stock")] == [9, 8, 7]


async def test_the_end_is_told_even_when_the_stock_cannot_be_stopped(shop: Shop) -> None:
    async def failing_stop(offer_id: str) -> bool:
        raise Unavailable("the reservation store is away")

    shop.stock.stop = failing_stop  # type: ignore[method-assign]
    offer = await shop.launch(quantity=1, limit=1)
    await shop.claim(offer, buyer(1), "k")
    await asyncio.sleep(0.05)
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    ended = shop.events.of_type("offer.ended")
    assert ended == [{"type": "offer.ended", "offer_id": offer.id, "reason": "sold_out"}]


async def test_close_stops_waiting_announcements_but_lets_an_end_be_told(shop: Shop) -> None:
    going_on, stop = asyncio.Event(), shop.stock.stop

    async def slow_stop(offer_id: str) -> bool:
        await going_on.wait()
        return await stop(offer_id)

    shop.stock.stop = slow_stop  # type: ignore[method-assign]
    waiting = await shop.launch(quantity=10, limit=1)
    await shop.claim(waiting, buyer(1), "k")  # 9, at once
    await asyncio.sleep(0.01)
    await shop.claim(waiting, buyer(2), "k")  # 8, waits for the next period
    selling_out = await shop.launch(quantity=1, limit=1)
    await shop.claim(selling_out, buyer(3), "k")
    await asyncio.sleep(0.05)  # its end is recorded; the stock is being stopped
    closing = asyncio.create_task(shop.offers.close())
    await asyncio.sleep(0.05)
    going_on.set()
    await closing
    await shop.claim(waiting, buyer(4), "k")  # after close: no announcement
    await settle()
    figures = [(e["offer_id"], e["remaining"]) for e in shop.events.of_type("offer.stock")]
    assert figures == [(waiting.id, 9), (selling_out.id, 0)]
    assert [e["offer_id"] for e in shop.events.of_type("offer.ended")] == [selling_out.id]


async def test_a_sell_out_on_two_processes_at_once_is_announced_once(shop: Shop) -> None:
    other = second_process(shop)
    offer = await shop.launch(quantity=6, limit=1)
    claims = [
        (shop.orders if n % 2 else other).claim(
            offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS
        )
        for n in range(8)
    ]
    results = await asyncio.gather(*claims, return_exceptions=True)
    assert sum(not isinstance(result, BaseException) for result in results) == 6
    await settle()
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds.count(("offer.stock", 0)) == 1
    assert kinds[-2:] == [("offer.stock", 0), ("offer.ended", None)]
    figures = [remaining for kind, remaining in kinds if kind == "offer.stock"]
    assert figures == sorted(figures, reverse=True)


class SlowOrderStore(MemoryOrderStore):
    """Holds every create until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = asyncio.Event(), asyncio.Event()

    async def create(self, order: Order) -> Order:
        self.entered.set()
        await self.go.wait()
        return await super().create(order)


async def test_a_claimer_gone_mid_write_still_attaches_its_order(shop: Shop) -> None:
    # A dropped socket cancels its claim. Its order must still be attached to the reservation,
    # or the reaper would take the order's units for an orphan's and sell them again.
    slow = SlowOrderStore()
    orders = second_process(shop, slow)
    offer = await shop.launch(quantity=2, limit=1)
    claim = asyncio.create_task(
        orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await slow.entered.wait()
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    slow.go.set()
    await asyncio.sleep(0.1)  # the write goes on without its claimer
    [order] = await slow.list_for_buyer("buyer-1", 10)
    assert shop.events.private[-1][1]["order"]["id"] == order.id
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await orders.reap_orphans(offer.id) == 0
    assert await shop.stock.remaining(offer.id) == 1


async def test_cancel_gives_the_units_back_and_the_buyer_may_claim_again(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    cancelled = await shop.orders.cancel(order.id, buyer(1))
    assert cancelled.status is OrderStatus.CANCELLED
    assert [step.to_status for step in cancelled.history] == [
        OrderStatus.PENDING_PAYMENT,
        OrderStatus.CANCELLED,
    ]
    assert await shop.stock.remaining(offer.id) == 3
    again, created = await shop.claim(offer, buyer(1), "k2")
    assert created
    assert again.id != order.id
    with pytest.raises(Forbidden):
        await shop.orders.cancel(again.id, HOST)  # the host sees it, but only the buyer cancels


async def test_orders_are_visible_to_buyer_and_host_only(shop: Shop) -> None:
    offer = await shop.launch()
    order, _ = await shop.claim(offer, buyer(1), "k1")
    assert (await shop.orders.get(order.id, buyer(1))).id == order.id
    assert (await shop.orders.get(order.id, HOST)).id == order.id
    with pytest.raises(NotFound):
        await shop.orders.get(order.id, buyer(2))
    assert [o.id for o in await shop.orders.list(HOST, room_id=shop.room_id, limit=10)] == [
        order.id
    ]
    with pytest.raises(Forbidden):
        await shop.orders.list(buyer(2), room_id=shop.room_id, limit=10)


async def test_unpaid_orders_expire_once_and_return_their_stock(shop: Shop) -> None:
    offer = await shop.launch(quantity=3)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    assert await shop.orders.expire_due() == 0
    shop.clock.advance(minutes=16)
    results = await asyncio.gather(shop.orders.expire_due(), shop.orders.expire_due())
    assert sorted(results) == [0, 1]
    stored = await shop.orders.get(order.id, buyer(1))
    assert stored.status is OrderStatus.EXPIRED
    assert await shop.stock.remaining(offer.id) == 3


async def test_offers_end_by_time_exactly_once(shop: Shop) -> None:
    offer = await shop.launch()
    shop.clock.advance(seconds=61)
    assert sorted(await asyncio.gather(shop.offers.end_due(), shop.offers.end_due())) == [0, 1]
    assert shop.events.of_type("offer.ended") == [
        {"type": "offer.ended", "offer_id": offer.id, "reason": "expired"}
    ]
    with pytest.raises(Conflict) as closed:
        await shop.claim(offer, buyer(1), "late")
    assert closed.value.code == "offer_not_active"


async def test_a_reservation_whose_claimer_died_is_released(shop: Shop) -> None:
    offer = await shop.launch(quantity=2)
    # A claimer that reserved and died before writing its order.
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())
    assert await shop.orders.reap_orphans(offer.id) == 0  # too young to call orphaned
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await shop.orders.reap_orphans(offer.id) == 1
    assert await shop.stock.remaining(offer.id) == 2


class DiesBeforeAttach:
    """The reservations as seen by a process that dies (or loses Redis) between writing its
    order and attaching it."""

    def __init__(self, stock: MemoryStockReservations) -> None:
        self._stock = stock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stock, name)

    async def attach_order(self, offer_id: str, idempotency_key: str, order_id: str) -> None:
        raise Unavailable("the process died here")


async def claim_and_die(shop: Shop, offer: FlashOffer) -> Order:
    dying = second_process(shop, stock=cast(StockReservations, DiesBeforeAttach(shop.stock)))
    with pytest.raises(Unavailable):
        await dying.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    [order] = await shop.orders_store.list_for_buyer("buyer-1", 10)
    return order


async def test_an_order_whose_claimer_died_before_attaching_it_keeps_its_units(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=2)
    await claim_and_die(shop, offer)
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await shop.orders.reap_orphans(offer.id) == 0  # attached now, not released
    assert await shop.stock.remaining(offer.id) == 1
    assert await shop.stock.pending_without_order(offer.id, shop.clock()) == []


async def test_a_retry_attaches_the_order_its_first_attempt_wrote(shop: Shop) -> None:
    offer = await shop.launch(quantity=2)
    written = await claim_and_die(shop, offer)
    order, created = await shop.claim(offer, buyer(1), "k")
    assert (order.id, created) == (written.id, False)
    later = shop.clock() + ORPHAN_AFTER * 2
    assert await shop.stock.pending_without_order(offer.id, later) == []
    assert await shop.stock.remaining(offer.id) == 1


async def test_lost_stock_is_rebuilt_from_the_orders(shop: Shop) -> None:
    offer = await shop.launch(quantity=5, limit=3)
    await shop.claim(offer, buyer(1), "k1", quantity=2)
    cancelled, _ = await shop.claim(offer, buyer(2), "k2")
    await shop.orders.cancel(cancelled.id, buyer(2))
    shop.stock.flush()  # Redis restarted without persistence
    _order, created = await shop.claim(offer, buyer(3), "k3")
    assert created
    assert await shop.stock.remaining(offer.id) == 2  # 5 - 2 (buyer 1) - 1 (buyer 3)
    with pytest.raises(Conflict) as limit:
        await shop.claim(offer, buyer(1), "k4", quantity=2)
    assert limit.value.code == "limit_reached"


async def test_housekeeping_ends_expires_and_reaps(shop: Shop) -> None:
    offer = await shop.launch(quantity=4)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())  # claimer died
    keeper = Housekeeper(shop.offers, shop.orders, shop.orders.recently_claimed_offers)
    shop.clock.advance(seconds=61)  # past the offer's end and the orphan grace
    await keeper.run_once()
    assert shop.events.of_type("offer.ended")[0]["reason"] == "expired"
    assert await shop.stock.remaining(offer.id) == 3  # the orphan's unit is back
    shop.clock.advance(minutes=15)
    await keeper.run_once()
    assert (await shop.orders.get(order.id, buyer(1))).status is OrderStatus.EXPIRED
    assert await shop.stock.remaining(offer.id) == 4


async def test_a_moment_too_late_hears_sold_out_not_inactive(shop: Shop) -> None:
    offer = await shop.launch(quantity=1, limit=1)
    await shop.claim(offer, buyer(1), "k1")
    await settle()  # the sold-out announcement ends the offer
    assert shop.events.of_type("offer.ended")[0]["reason"] == "sold_out"
    with pytest.raises(Conflict) as late:
        await shop.claim(offer, buyer(2), "k1")
    assert late.value.code == "sold_out"


async def test_concurrent_retries_write_one_order_and_only_one_is_new(shop: Shop) -> None:
    offer = await shop.launch(quantity=5)
    answers = await asyncio.gather(*(shop.claim(offer, buyer(1), "same") for _ in range(5)))
    assert len({order.id for order, _ in answers}) == 1
    assert [created for _, created in answers].count(True) == 1
    assert await shop.stock.remaining(offer.id) == 4
