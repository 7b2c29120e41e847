"""A shop on the memory adapters for the services' tests: a live room with a product, a fixed
clock, recorded events, and another "process" over the same stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.memory_orders import MemoryOfferStore, MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Unavailable
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.offers import FlashOffer
from server.domain.orders import HOLDS_STOCK, Address, Order, OrderStatus
from server.ports import OfferStore, OrderStore, ProductStore
from server.services.buyer_notices import Notify
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.services.rooms import RoomService
from server.services.stock_announcer import STOCK_ANNOUNCE_SECONDS
from server.stock_port import StockReservations
from tests.fakes import Clock, RecordingEvents

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STOCK = 50  # units of the shop's product
HOST = Identity("host-1", Role.HOST)
ADDRESS = Address.clean(
    name="Ana", line1="Rua 1", city="Lisboa", postal_code="1000-001", country="PT"
)


class HeldCalls:
    """A store (of orders, offers, products, stock) whose `method` calls wait at `gate` until
    it is set: a write under way while the test does something else. `entered` is set once one
    is waiting. With `answer_late`, the call is made at once and its answer held: a read whose
    caller goes on with what it read after the test changed things. `calls` counts the
    `method` calls made."""

    def __init__(self, shared: Any, method: str = "create", *, answer_late: bool = False) -> None:
        self._shared = shared
        self._method = method
        self._answer_late = answer_late
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._shared, name)
        if name != self._method:
            return call

        async def held(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            answer = await call(*args, **kwargs) if self._answer_late else None
            self.entered.set()
            await self.gate.wait()
            return answer if self._answer_late else await call(*args, **kwargs)

        return held


class HeldWrites:
    """An order store through a connection whose writes miss their deadline (the claimer
    hears "try again") and reach the database later, when the test says."""

    def __init__(self, shared: OrderStore) -> None:
        self._shared = shared
        self.held: list[Order] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def create(self, order: Order) -> Order:
        self.held.append(order)
        raise Unavailable("the order could not be written in time, try again")

    async def land(self) -> None:
        for order in self.held:
            await self._shared.create(order)


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

    async def launch(
        self, quantity: int = 3, limit: int = 2, countdown: int = 0, duration: int = 60
    ) -> FlashOffer:
        offer, _ = await launch_through(
            self.offers,
            self,
            quantity=quantity,
            limit=limit,
            countdown=countdown,
            duration=duration,
        )
        return offer

    async def claim(
        self, offer: FlashOffer, who: Identity, key: str, quantity: int = 1
    ) -> tuple[Order, bool]:
        return await self.orders.claim(
            offer.id, who, quantity=quantity, idempotency_key=key, address=ADDRESS
        )


async def offer_with_orders(shop: Shop, quantity: int, orders: int) -> FlashOffer:
    """An offer of `quantity` units in the shop's room, `orders` of them sold one a buyer."""
    offer = await shop.launch(quantity=quantity, limit=1)
    for n in range(orders):
        await shop.claim(offer, buyer(n), f"k{n}")
    return offer


async def assert_cancelled_and_told(shop: Shop, writes: HeldWrites, told_before: int) -> None:
    """The order `writes` held (buyer 1's) is cancelled, and its buyer was told so, once, after
    the first `told_before` private frames."""
    (late,) = writes.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.CANCELLED
    told = shop.events.private[told_before:]
    assert [(user, e["order"]["status"]) for user, e in told] == [("buyer-1", "cancelled")]


async def move_in_store(
    store: OrderStore, order_id: str, *steps: OrderStatus, at: datetime, by: str = "payments"
) -> Order:
    """Move the stored order through `steps`, each through the store's own transition write,
    as a payment connector (or, later, fulfilment) will: nothing in the product pays yet."""
    order = await store.get(order_id)
    for to in steps:
        before = order.status
        order.move(to, at=at, by=by, reason=f"test: {to}")
        await store.save_move(order, expected=before)
    return order


async def pay(shop: Shop, order_id: str) -> Order:
    """The shop's order paid, written to its store as a payment connector will."""
    return await move_in_store(shop.orders_store, order_id, OrderStatus.PAID, at=shop.clock())


async def units_held(shop: Shop, offer_id: str) -> int:
    """The units the offer's orders hold (pending payment, paid and on)."""
    orders = await shop.orders_store.of_offer(offer_id)
    return sum(o.quantity for o in orders if o.status in HOLDS_STOCK)


async def launch_through(
    service: OfferService,
    shop: Shop,
    *,
    quantity: int = 30,
    limit: int = 1,
    countdown: int = 0,
    duration: int = 60,
    key: str | None = None,
    who: Identity = HOST,
) -> tuple[FlashOffer, bool]:
    """A launch of the shop's product at 9.90 USD in its room, through `service` (the shop's
    own process or another's)."""
    launched = await service.launch(
        shop.room_id,
        who,
        product_id=shop.product_id,
        price=Money(Decimal("9.90"), "USD"),
        quantity=quantity,
        per_user_limit=limit,
        countdown_seconds=countdown,
        duration_seconds=duration,
        idempotency_key=key,
    )
    return launched.offer, launched.created


async def settle() -> None:
    """Let the coalesced stock announcements run."""
    await asyncio.sleep(STOCK_ANNOUNCE_SECONDS + 0.05)


async def open_shop() -> Shop:
    """A live room with a product, on the memory adapters, a fixed clock and recorded events."""
    clock, events = Clock(T0), RecordingEvents()
    rooms, products = MemoryRoomStore(), MemoryProductStore()
    offers_store, orders_store = MemoryOfferStore(), MemoryOrderStore()
    stock = MemoryStockReservations()
    room_service = RoomService(rooms, products, events, clock)
    product = await room_service.create_product(
        HOST, title="Serum", price=Money(Decimal("24.90"), "USD"), stock=STOCK, images=[]
    )
    room = await room_service.create_room(HOST, "Show")
    await room_service.start(room.id, HOST)
    offers = OfferService(offers_store, orders_store, rooms, products, stock, events, clock)
    orders = OrderService(
        offers_store, orders_store, products, stock, offers, events.send_private, clock, rooms=rooms
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


def other_process(
    shop: Shop,
    *,
    offers_store: OfferStore | None = None,
    orders: OrderStore | None = None,
    stock: StockReservations | None = None,
    events: RecordingEvents | None = None,
    products: ProductStore | None = None,
    notify: Notify | None = None,
    clock: Callable[[], datetime] | None = None,
) -> tuple[OfferService, OrderService]:
    """Another server process: its own services over the same stores, reservations and room
    (or ones that behave differently: busy, failing, its clock apart), and its own delivery to
    buyers (`notify`). `offers_store` and `products` are for its offer service alone."""
    clock = clock or shop.clock
    offers = OfferService(
        offers_store or shop.offers_store,
        shop.orders_store,
        shop.rooms,
        products or shop.products,
        stock or shop.stock,
        events or shop.events,
        clock,
    )
    return offers, OrderService(
        shop.offers_store,
        orders or shop.orders_store,
        shop.products,
        stock or shop.stock,
        offers,
        notify or shop.events.send_private,
        clock,
        rooms=shop.rooms,
    )


def second_process(
    shop: Shop, orders: OrderStore | None = None, stock: StockReservations | None = None
) -> OrderService:
    """Another server process's claims and orders (see other_process)."""
    return other_process(shop, orders=orders, stock=stock)[1]


async def rebuild_paused_at(
    shop: Shop, offer: FlashOffer, method: str
) -> tuple[asyncio.Task[None], HeldCalls]:
    """Another process's rebuild of the offer (lost: the caller flushed it), paused as it
    calls its stock's `method` ("rebuild": the orders read; "unconfirmed": the stock written,
    not yet checked); `gate` lets it go on."""
    held = HeldCalls(shop.stock, method)
    offers, _ = other_process(shop, stock=cast(StockReservations, held))
    rebuild = asyncio.create_task(offers.rebuild(offer.id))
    await held.entered.wait()
    return rebuild, held


def offers_reading(shop: Shop, orders: Any) -> OfferService:
    """Another process's offer service, reading the orders through `orders` (a held store)."""
    return OfferService(
        shop.offers_store,
        cast(OrderStore, orders),
        shop.rooms,
        shop.products,
        shop.stock,
        shop.events,
        shop.clock,
    )
