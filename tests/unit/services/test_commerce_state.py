"""A hypothesis state machine through the claim and order services: claims (with retried
keys), cancellations (by the buyer, and refused to anyone else), payments and fulfilment (as
a payment connector will record them, through the order store's own move), expiries, the
reaper, reservation-store data loss, the host's stop and the settling, on the in-memory
adapters. Each claim of a new key is answered as a model of
the offer predicts (an order when units are left and the buyer is under the limit, else the
right refusal, `limit_reached` also once the buyer made as many claims as one may), and a
retry of a key that has its order gets that order. A lost stock is left
to the services to rebuild. After every step: stock never negative, units held never above the
quantity, no buyer above the limit, remaining == quantity - held, one order per buyer and key,
every order's history legal (checked against the product brief's moves, written out here, not
the product's own table), and what the offer books of its product's stock covers what its
orders hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any, TypeVar, cast

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.memory_orders import MemoryOfferStore, MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import LiveshopError
from server.domain.identity import Identity, Role, scoped_key
from server.domain.money import Money
from server.domain.offers import (
    LATE_ORDERS,
    ORPHAN_AFTER,
    ClaimOutcome,
    EndReason,
    FlashOffer,
    most_claims,
    units_booked,
)
from server.domain.orders import HOLDS_STOCK, Address, Order, OrderStatus, Transition
from server.ports import OrderStore
from server.services.late_orders import LATE_WRITES
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.services.rooms import RoomService
from tests.fakes import Clock, RecordingEvents
from tests.unit.services.shop import HeldWrites, move_in_store

T = TypeVar("T")
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FAR_FUTURE = T0 + timedelta(days=30)
HOST = Identity("host", Role.HOST)
QUANTITY, LIMIT = 6, 2
BUYERS = [Identity(f"b{i}", Role.SHOPPER) for i in range(5)]
ADDRESS = Address.clean(
    name="A", line1="Rua 1", city="Lisboa", postal_code="1000-001", country="PT"
)
# Not the product's TRANSITIONS, which a mistake there would change too: the brief's moves.
# pending_payment -> paid -> fulfilling -> shipped -> delivered; pending_payment -> cancelled
# or expired; paid -> refunded. Nothing else, and nothing out of cancelled, expired, refunded
# or delivered.
LEGAL_MOVES = frozenset(
    {
        ("pending_payment", "paid"),
        ("paid", "fulfilling"),
        ("fulfilling", "shipped"),
        ("shipped", "delivered"),
        ("pending_payment", "cancelled"),
        ("pending_payment", "expired"),
        ("paid", "refunded"),
    }
)
# Fulfilment's next step for an order paid or on its way (refunds are not modelled: nothing
# in the product gives a refund's units back yet).
NEXT_STEP = {
    OrderStatus.PAID: OrderStatus.FULFILLING,
    OrderStatus.FULFILLING: OrderStatus.SHIPPED,
    OrderStatus.SHIPPED: OrderStatus.DELIVERED,
}
# Who may see others' orders but cancel none: the room's host and an admin (another shopper
# is told the order does not exist).
NOT_THE_BUYER = [HOST, Identity("admin", Role.ADMIN), *BUYERS]


def history_follows_the_brief(order: Order) -> bool:
    """Created pending payment, then only the brief's moves, each from where the last left,
    ending at the order's status."""
    history: list[Transition] = list(order.history)
    if not history or history[0].from_status is not None:
        return False
    statuses = [history[0].to_status.value]
    for step in history[1:]:
        if step.from_status is None or step.from_status.value != statuses[-1]:
            return False
        statuses.append(step.to_status.value)
    return (
        statuses[0] == "pending_payment"
        and all(move in LEGAL_MOVES for move in pairwise(statuses))
        and statuses[-1] == order.status.value
    )


class FlashSale(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock(T0)
        events = RecordingEvents()
        rooms, products = MemoryRoomStore(), MemoryProductStore()
        self.orders_store, self.offers_store = MemoryOrderStore(), MemoryOfferStore()
        self.stock = MemoryStockReservations()
        self.rooms = RoomService(rooms, products, events, self.clock)
        self.offers = OfferService(
            self.offers_store, self.orders_store, rooms, products, self.stock, events, self.clock
        )

        def orders_through(orders: OrderStore) -> OrderService:
            return OrderService(
                self.offers_store,
                orders,
                products,
                self.stock,
                self.offers,
                events.send_private,
                self.clock,
                rooms=rooms,
            )

        self.service = orders_through(self.orders_store)
        # Another process, whose order writes miss their deadline and land when a rule says.
        self.late_writes = HeldWrites(self.orders_store)
        self.late_service = orders_through(cast(OrderStore, self.late_writes))
        self.written_late: list[tuple[str, str]] = []  # (buyer, key) of held writes
        self.losses = 0  # of Redis's data so far
        self.losses_at: dict[str, int] = {}  # by held order id: losses before its claim
        # Orders that landed late and were cancelled, their units gone: a retry of the key
        # gets that order, or `claim_expired` where the stock still knows the key released.
        self.lost_late: dict[tuple[str, str], str] = {}
        self.by_key: dict[tuple[str, str], str] = {}
        self.booked = QUANTITY  # what the offer books of its product's stock, as last seen
        self.quantity_of: dict[tuple[str, str], int] = {}  # what each key first claimed
        # Claims each buyer made, at least: each may have reserved (see most_claims).
        self.claims_made: Counter[str] = Counter()
        self.offer: FlashOffer

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    @initialize()
    def launch(self) -> None:
        async def setup() -> FlashOffer:
            product = await self.rooms.create_product(
                HOST, title="Serum", price=Money(Decimal("20"), "USD"), stock=100, images=[]
            )
            room = await self.rooms.create_room(HOST, "Show")
            await self.rooms.start(room.id, HOST)
            launched = await self.offers.launch(
                room.id,
                HOST,
                product_id=product.id,
                price=Money(Decimal("9.90"), "USD"),
                quantity=QUANTITY,
                per_user_limit=LIMIT,
                countdown_seconds=0,
                duration_seconds=86_400,
            )
            return launched.offer

        self.offer = self.run(setup())

    @rule(buyer=st.sampled_from(BUYERS), key=st.sampled_from("abcdef"), quantity=st.integers(1, 2))
    def claim(self, buyer: Identity, key: str, quantity: int) -> None:
        claimed = (buyer.user_id, key)
        # A key never used before is the model's to predict: what may it take?
        room = None if claimed in self.quantity_of else self.claimable(buyer.user_id)
        try:
            order, created = self.run(
                self.service.claim(
                    self.offer.id, buyer, quantity=quantity, idempotency_key=key, address=ADDRESS
                )
            )
        except LiveshopError as error:
            self.refused(claimed, quantity, room, error.code)
            return
        if room is not None:  # every refusal would have been wrong
            left, mine = room
            assert left >= quantity, (left, quantity)
            assert mine + quantity <= LIMIT, (mine, quantity)
        known = self.by_key.get(claimed, self.lost_late.get(claimed))
        if known is not None:
            assert not created
            assert order.id == known  # a retry finds its order, never a second one
            assert order.quantity == quantity
        else:
            assert created
            self.claims_made[buyer.user_id] += 1
            self.by_key[claimed] = order.id
            self.quantity_of[claimed] = quantity

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        # In an order hypothesis can replay: ids are random, and orders made in the same
        # instant would otherwise come in another order each run.
        orders = sorted(self.all_orders(), key=lambda o: (o.buyer_id, o.idempotency_key))
        if not orders:
            return
        order = data.draw(st.sampled_from(orders))
        buyer = Identity(order.buyer_id, Role.SHOPPER)
        try:
            cancelled = self.run(self.service.cancel(order.id, buyer))
        except LiveshopError as error:
            assert order.status is not OrderStatus.PENDING_PAYMENT
            assert error.code == "invalid_transition"  # noqa: PT017
            return
        # Only an order awaiting payment is cancelled; one its buyer cancelled already is
        # answered as it stands (the cancel sent again).
        assert cancelled.status is OrderStatus.CANCELLED
        assert order.status in (OrderStatus.PENDING_PAYMENT, OrderStatus.CANCELLED), order.status
        if order.status is OrderStatus.CANCELLED:
            assert order.history[-1].by == buyer.user_id
            assert cancelled.history == order.history
        stored = self.run(self.orders_store.get(order.id))
        assert (stored.status, stored.history[-1].by) == (OrderStatus.CANCELLED, buyer.user_id)

    @rule(data=st.data(), who=st.sampled_from(NOT_THE_BUYER))
    def someone_else_cancels(self, data: st.DataObject, who: Identity) -> None:
        """Anyone but the buyer is refused, and nothing changes: neither the order nor the
        stock."""
        orders = sorted(self.all_orders(), key=lambda o: (o.buyer_id, o.idempotency_key))
        orders = [o for o in orders if o.buyer_id != who.user_id]
        if not orders:
            return
        order = data.draw(st.sampled_from(orders))
        remaining = self.remaining()
        try:
            self.run(self.service.cancel(order.id, who))
        except LiveshopError as error:
            # The host and an admin may see the order, another shopper may not.
            refused = "not_found" if who.role is Role.SHOPPER else "forbidden"
            assert error.code == refused, (who, error.code)  # noqa: PT017
        else:
            raise AssertionError(f"{who} cancelled {order.buyer_id}'s order")
        stored = self.run(self.orders_store.get(order.id))
        assert (stored.status, stored.history) == (order.status, order.history)
        assert self.remaining() == remaining

    @rule(data=st.data())
    def payment_lands(self, data: st.DataObject) -> None:
        """A pending order paid, as a payment connector will record it: the store's own move
        (nothing in the product pays yet)."""
        pending = sorted(
            (o for o in self.all_orders() if o.status is OrderStatus.PENDING_PAYMENT),
            key=lambda o: (o.buyer_id, o.idempotency_key),
        )
        if not pending:
            return
        order = data.draw(st.sampled_from(pending))
        self.run(move_in_store(self.orders_store, order.id, OrderStatus.PAID, at=self.clock()))

    @rule(data=st.data())
    def fulfilment_moves_on(self, data: st.DataObject) -> None:
        """A paid order goes on its way one step: fulfilling, shipped, delivered."""
        moving = sorted(
            (o for o in self.all_orders() if o.status in NEXT_STEP),
            key=lambda o: (o.buyer_id, o.idempotency_key),
        )
        if not moving:
            return
        order = data.draw(st.sampled_from(moving))
        step = NEXT_STEP[order.status]
        self.run(move_in_store(self.orders_store, order.id, step, at=self.clock(), by="carrier"))

    def remaining(self) -> int | None:
        """The offer's stock left, or None while the store has lost it."""
        if not self.run(self.stock.is_ready(self.offer.id)):
            return None
        return self.run(self.stock.remaining(self.offer.id))

    @rule(minutes=st.integers(1, 20))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        self.run(self.service.expire_due())
        self.run(self.service.reap_orphans(self.offer.id))

    @rule()
    def reservation_store_loses_everything(self) -> None:
        self.stock.flush()
        self.losses += 1

    @rule(buyer=st.sampled_from(BUYERS), key=st.sampled_from("abcdef"))
    def claimer_dies(self, buyer: Identity, key: str) -> None:
        """A claim whose process dies between reserving and writing its order."""
        scoped = f"{buyer.user_id}:{key}"
        result = self.run(self.stock.claim(self.offer.id, buyer.user_id, 1, scoped, self.clock()))
        if result.outcome is ClaimOutcome.RESERVED:
            self.claims_made[buyer.user_id] += 1
            self.quantity_of.setdefault((buyer.user_id, key), 1)  # a retry must ask for 1

    @rule(buyer=st.sampled_from(BUYERS), key=st.sampled_from("abcdef"))
    def claim_written_late(self, buyer: Identity, key: str) -> None:
        """A claim whose order write misses its deadline ("try again") and lands later."""
        claimed = (buyer.user_id, key)
        held = len(self.late_writes.held)
        try:
            self.run(
                self.late_service.claim(
                    self.offer.id, buyer, quantity=1, idempotency_key=key, address=ADDRESS
                )
            )
        except LiveshopError as error:
            if error.code != "unavailable":  # refused before its write: as any claim
                self.refused(claimed, 1, None, error.code)
                return
        self.claims_made[buyer.user_id] += 1
        self.quantity_of.setdefault(claimed, 1)  # a retry must ask for 1
        self.written_late.append(claimed)
        for order in self.late_writes.held[held:]:
            self.losses_at[order.id] = self.losses

    @rule()
    def late_writes_land(self) -> None:
        """The held writes land, those made within LATE_WRITES (older ones never will: TCP
        gives up); a while later every process's housekeeping has run. A retry of their keys
        gets the order written if it holds its units, and may hear `claim_expired` if it was
        cancelled for want of them. Not while Redis has lost the offer (the rebuild that
        follows counts them, which is right while the offer runs, not once it has ended),
        nor those made before two losses of Redis's data: a rebuild after the first may have
        missed them, and one after the second would count them (the limits of finding 113,
        docs/flashsale.md)."""
        if not self.run(self.stock.is_ready(self.offer.id)):
            return
        held = self.late_writes.held
        held[:] = [
            o
            for o in held
            if self.clock() - o.created_at < LATE_WRITES and self.losses - self.losses_at[o.id] < 2
        ]
        self.run(self.late_writes.land())
        held.clear()
        self.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
        self.run(self.service.reap_orphans(self.offer.id))
        self.run(self.service.settle_late_orders())
        for buyer_id, key in self.written_late:
            landed = self.run(self.orders_store.by_key(self.offer.id, scoped_key(buyer_id, key)))
            if landed is None or (buyer_id, key) in self.by_key:
                continue
            if landed.holds_stock:
                self.by_key[(buyer_id, key)] = landed.id
            else:
                self.lost_late[(buyer_id, key)] = landed.id
        self.written_late.clear()

    @rule(lost_first=st.booleans())
    def host_stops(self, lost_first: bool) -> None:
        if lost_first:
            self.reservation_store_loses_everything()
        self.run(self.offers.stop(self.offer.id, HOST))

    @rule()
    def settling(self) -> None:
        self.clock.advance(seconds=LATE_ORDERS.total_seconds())
        self.run(self.service.settle_due())

    def refused(
        self, claimed: tuple[str, str], quantity: int, room: tuple[int, int] | None, code: str
    ) -> None:
        """Check a refusal of the claim: one of the claim's codes, and, for a key never used
        before (`room`: what it may take), the right one."""
        if code == "idempotency_key_reused":
            first = self.quantity_of.get(claimed)
            assert first is not None
            assert first != quantity  # the same key, other terms
            return
        # A retry of a key that has its order gets that order, whatever came since.
        assert claimed not in self.by_key, code
        # Selling out ends the offer, so later claims find it no longer active.
        expected = {"sold_out", "insufficient_stock", "limit_reached", "offer_not_active"}
        assert code in {*expected, "claim_expired"}, code
        if code == "claim_expired":
            self.quantity_of.setdefault(claimed, quantity)
        if room is None:
            return
        left, mine = room  # the offer runs, and the key is new
        assert code not in ("offer_not_active", "claim_expired"), code
        if code in ("sold_out", "insufficient_stock"):
            assert left < quantity, (code, left)
            # Over the limit is told first while units are left (claiming fewer won't help).
            assert left == 0 or mine + quantity <= LIMIT, (code, left, mine, quantity)
        else:  # or the buyer has made as many claims as one may
            made = self.claims_made[claimed[0]]
            assert mine + quantity > LIMIT or made >= most_claims(LIMIT), (code, mine, made)

    def claimable(self, buyer_id: str) -> tuple[int, int] | None:
        """What a new claim may take while the offer runs: the units left, and the buyer's
        units already held (orders, and their reservations no order has yet); None once the
        offer has ended. Stock the store lost is rebuilt from the orders alone."""
        if self.run(self.offers_store.get(self.offer.id)).end_reason is not None:
            return None
        held = [o for o in self.all_orders() if o.status in HOLDS_STOCK]
        pending = []
        if self.run(self.stock.is_ready(self.offer.id)):
            pending = self.run(self.stock.pending_without_order(self.offer.id, FAR_FUTURE))
        left = QUANTITY - sum(o.quantity for o in held) - sum(p.quantity for p in pending)
        mine = sum(o.quantity for o in held if o.buyer_id == buyer_id)
        mine += sum(p.quantity for p in pending if p.buyer_id == buyer_id)
        return left, mine

    def all_orders(self) -> list[Order]:
        """Every order stored, not only those the claims answered with."""
        return [
            order
            for buyer in BUYERS
            for order in self.run(self.orders_store.list_for_buyer(buyer.user_id, 1_000))
        ]

    @invariant()
    def stock_matches_the_orders(self) -> None:
        if not hasattr(self, "offer"):
            return
        orders = self.all_orders()
        held = [o for o in orders if o.status in HOLDS_STOCK]
        units = sum(o.quantity for o in held)
        offer = self.run(self.offers_store.get(self.offer.id))
        assert units <= QUANTITY
        # Stock the store lost is left to the claims, cancels and expiries to rebuild, as they
        # must: checked whenever it is there.
        if self.run(self.stock.is_ready(self.offer.id)):
            remaining = self.run(self.stock.remaining(self.offer.id))
            orphans = self.run(self.stock.pending_without_order(self.offer.id, FAR_FUTURE))
            assert remaining >= 0
            if offer.end_reason is EndReason.SOLD_OUT:
                assert remaining == 0  # units given back since go to the product, not the offer
            else:
                assert remaining == QUANTITY - units - sum(p.quantity for p in orphans)
        per_buyer = Counter[str]()
        for order in held:
            per_buyer[order.buyer_id] += order.quantity
        assert all(units <= LIMIT for units in per_buyer.values())
        assert all(history_follows_the_brief(order) for order in orders), [
            [(t.from_status, t.to_status) for t in o.history] for o in orders
        ]
        keys = Counter((o.buyer_id, o.idempotency_key) for o in orders)
        assert all(count == 1 for count in keys.values())
        assert set(self.by_key.values()) <= {o.id for o in orders}
        # What the offer books of its product's stock covers what its orders hold, and never
        # grows (a stock count relies on that).
        booked = units_booked([offer], {offer.id: units})
        assert units <= booked <= self.booked
        self.booked = booked


FlashSale.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFlashSale = FlashSale.TestCase
