"""Offers, claims and orders through the services, with the in-memory adapters."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, cast

import pytest

from schemas.commerce import order_to_wire
from server.adapters.memory_orders import MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Conflict, Forbidden, NotFound, Unavailable
from server.domain.identity import Identity, Role, client_key, scoped_key
from server.domain.money import Money
from server.domain.offers import ORPHAN_AFTER, EndReason, FlashOffer, StockFigure
from server.domain.orders import Address, Order, OrderStatus
from server.domain.times import iso_z
from server.services.housekeeping import Housekeeper
from server.services.orders import OrderService
from server.stock_port import StockReservations
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    Shop,
    buyer,
    other_process,
    second_process,
    settle,
)


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
    assert "stock" not in order.product  # the seller's, not the goods'
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


ELSEWHERE = Address.clean(
    name="Ana", line1="Rua 2", city="Porto", postal_code="4000-001", country="PT"
)


async def test_the_same_key_with_other_terms_is_refused_and_changes_nothing(shop: Shop) -> None:
    offer = await shop.launch(quantity=5, limit=3)
    first, _ = await shop.claim(offer, buyer(1), "k1")
    attempts = [
        shop.claim(offer, buyer(1), "k1", quantity=2),
        shop.orders.claim(offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ELSEWHERE),
    ]
    for attempt in attempts:
        with pytest.raises(Conflict) as refused:
            await attempt
        assert refused.value.code == "idempotency_key_reused"
    assert await shop.stock.remaining(offer.id) == 4
    assert (await shop.orders.get(first.id, buyer(1))).quantity == 1
    assert (await shop.claim(offer, buyer(1), "k1"))[0].id == first.id  # the same terms: fine


async def test_a_retry_with_other_terms_is_refused_while_its_first_attempt_has_no_order(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=5, limit=3)
    await shop.stock.claim(offer.id, "buyer-1", 1, "buyer-1:k", shop.clock())  # on its way
    with pytest.raises(Conflict) as refused:
        await shop.claim(offer, buyer(1), "k", quantity=2)
    assert refused.value.code == "idempotency_key_reused"
    assert await shop.orders_store.list_for_buyer("buyer-1", 10) == []


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
    # The countdown's shopper is told when to come back; the late one that it is over.
    assert early.value.message == f"the offer starts at {iso_z(later.starts_at)}: claim then"
    assert early.value.details == {"starts_at": iso_z(later.starts_at)}  # for the app, in a field
    shop.clock.advance(seconds=100)
    with pytest.raises(Conflict) as over:
        await shop.claim(later, buyer(1), "f")
    not_active = ("offer_not_active", "the offer is not active")
    assert (over.value.code, over.value.message) == not_active
    assert over.value.details == {}
    # Stopped during its countdown, it will not start: nobody is told to come back for it.
    stopped = await shop.launch(countdown=30)
    await shop.offers.stop(stopped.id, HOST)
    with pytest.raises(Conflict) as never:
        await shop.claim(stopped, buyer(1), "g")
    assert (never.value.code, never.value.message) == (
        "offer_not_active",
        "the offer is not active",
    )


async def test_a_host_cannot_buy_from_their_own_offers(shop: Shop) -> None:
    """Nor take the unit: a shopper still gets it. A host buys elsewhere as anyone does."""
    offer = await shop.launch(quantity=1, limit=1)
    with pytest.raises(Forbidden) as own:
        await shop.claim(offer, HOST, "k")
    assert own.value.code == "own_offer"
    assert (await shop.claim(offer, buyer(1), "k"))[1]
    another_host = Identity("host-2", Role.HOST)
    assert (await shop.claim(await shop.launch(), another_host, "k"))[1]


async def test_a_hosts_claim_made_before_the_rule_gets_its_order_when_sent_again(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=2, limit=1)
    key = scoped_key(HOST.user_id, "k")
    await shop.stock.claim(offer.id, HOST.user_id, 1, key, shop.clock())  # then: no refusal
    order, created = await shop.claim(offer, HOST, "k")  # its first attempt's answer was lost
    assert (order.buyer_id, created) == (HOST.user_id, True)
    with pytest.raises(Forbidden):
        await shop.claim(offer, HOST, "k2")


class SlowOrderStore(MemoryOrderStore):
    """Holds every create until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = asyncio.Event(), asyncio.Event()

    async def create(self, order: Order) -> Order:
        self.entered.set()
        await self.go.wait()
        return await super().create(order)


async def claimer_gone_mid_write(shop: Shop) -> tuple[SlowOrderStore, OrderService, str]:
    """A claim whose socket dropped while its order was being written (held until `go`): the
    store, the process, the offer's id."""
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
    return slow, orders, offer.id


async def test_a_claimer_gone_mid_write_still_attaches_its_order(shop: Shop) -> None:
    # A dropped socket cancels its claim. Its order must still be attached to the reservation,
    # and its buyer told, at once, not when the reaper finds it.
    slow, orders, offer_id = await claimer_gone_mid_write(shop)
    slow.go.set()
    await asyncio.sleep(0.1)  # the write goes on without its claimer
    [order] = await slow.list_for_buyer("buyer-1", 10)
    assert shop.events.private[-1][1]["order"]["id"] == order.id
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await orders.reap_orphans(offer_id) == 0
    assert await shop.stock.remaining(offer_id) == 1


async def test_shutdown_waits_for_the_orders_being_written(shop: Shop) -> None:
    slow, orders, offer_id = await claimer_gone_mid_write(shop)  # as the server drained
    closing = asyncio.create_task(orders.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # the stores close next: not under the write
    slow.go.set()
    await asyncio.wait_for(closing, 1)
    [order] = await slow.list_for_buyer("buyer-1", 10)
    unattached = await shop.stock.pending_without_order(offer_id, shop.clock() + ORPHAN_AFTER)
    assert unattached == []
    assert shop.events.private[-1][1]["order"]["id"] == order.id


async def test_orders_are_visible_to_buyer_and_host_only(shop: Shop) -> None:
    offer = await shop.launch()
    order, _ = await shop.claim(offer, buyer(1), "k1")
    assert (await shop.orders.get(order.id, buyer(1))).id == order.id
    assert (await shop.orders.get(order.id, HOST)).id == order.id
    with pytest.raises(NotFound):
        await shop.orders.get(order.id, buyer(2))
    page = await shop.orders.list(HOST, room_id=shop.room_id, limit=10)
    assert [o.id for o in page.items] == [order.id]
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


async def test_a_stop_or_an_expiry_tells_the_room_what_was_left(shop: Shop) -> None:
    """The room's last figure may be older than the end (figures are coalesced, and none may
    follow the end): `offer.ended` says what was left once its stock stopped."""
    stopped, expiring = await shop.launch(quantity=5), await shop.launch(quantity=4)
    await shop.claim(stopped, buyer(1), "k1")
    await shop.claim(expiring, buyer(1), "k2")
    await shop.claim(expiring, buyer(2), "k3")
    await shop.offers.stop(stopped.id, HOST)
    shop.clock.advance(seconds=61)
    assert await shop.offers.end_due() == 1
    ended = {
        e["offer_id"]: (e["reason"], e["remaining"]) for e in shop.events.of_type("offer.ended")
    }
    assert ended == {stopped.id: ("stopped", 4), expiring.id: ("expired", 2)}


async def test_offers_end_by_time_exactly_once(shop: Shop) -> None:
    offer = await shop.launch()
    shop.clock.advance(seconds=61)
    assert sorted(await asyncio.gather(shop.offers.end_due(), shop.offers.end_due())) == [0, 1]
    assert shop.events.of_type("offer.ended") == [
        {"type": "offer.ended", "offer_id": offer.id, "reason": "expired", "remaining": 3}
    ]
    # However late housekeeping ran, claims stopped at the end time: that is when it ended.
    assert (await shop.offers_store.get(offer.id)).ended_at == offer.ends_at
    with pytest.raises(Conflict) as closed:
        await shop.claim(offer, buyer(1), "late")
    assert closed.value.code == "offer_not_active"


async def test_a_stop_after_the_offers_time_was_up_ends_it_expired_at_its_time(
    shop: Shop,
) -> None:
    """Before housekeeping's round came to it: not "stopped" at a moment after its end."""
    offer = await shop.launch()
    shop.clock.advance(seconds=61)
    stopped = await shop.offers.stop(offer.id, HOST)
    assert (stopped.end_reason, stopped.ended_at) == (EndReason.EXPIRED, offer.ends_at)
    assert [e["reason"] for e in shop.events.of_type("offer.ended")] == ["expired"]
    assert await shop.offers.end_due() == 0


async def test_a_reservation_whose_claimer_died_is_released(shop: Shop) -> None:
    offer = await shop.launch(quantity=2)
    # A claimer that reserved and died before writing its order.
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())
    assert await shop.orders.reap_orphans(offer.id) == 0  # too young to call orphaned
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await shop.orders.reap_orphans(offer.id) == 1
    assert await shop.stock.remaining(offer.id) == 2


async def test_every_process_reaps_running_offers_in_turn_whoever_claimed(shop: Shop) -> None:
    # Every process that claimed for these offers has restarted, and nobody watches the room:
    # a process that never claimed for them still releases their orphans, within a period.
    offers = [await shop.launch(quantity=2, duration=3600) for _ in range(3)]
    for n, offer in enumerate(offers):
        await shop.stock.claim(offer.id, f"buyer-{n}", 1, f"buyer-{n}:k", shop.clock())
    offer_service, order_service = other_process(shop)
    keeper = Housekeeper(offer_service, order_service, lambda: [])
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    for _ in range(int(ORPHAN_AFTER.total_seconds())):  # a round a second
        await keeper.run_once()
    assert [await shop.stock.remaining(offer.id) for offer in offers] == [2, 2, 2]


class DiesBeforeAttach:
    """The reservations as seen by a process that dies (or loses Redis) between writing its
    order and attaching it."""

    def __init__(self, stock: MemoryStockReservations) -> None:
        self._stock = stock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stock, name)

    async def attach_order(self, *args: Any, **kwargs: Any) -> None:
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
    order = await claim_and_die(shop, offer)
    shop.events.private.clear()
    shop.clock.advance(seconds=ORPHAN_AFTER.total_seconds() + 1)
    assert await shop.orders.reap_orphans(offer.id) == 0  # attached now, not released
    # Its claimer died before it could tell the buyer: the reaper does.
    assert [(user, e["order"]["id"]) for user, e in shop.events.private] == [("buyer-1", order.id)]
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


async def test_a_sold_out_offer_still_answers_sold_out_once_an_order_is_cancelled(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=1, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    await settle()  # sold out and ended
    await shop.orders.cancel(order.id, buyer(1))  # its unit goes to the product, not the offer
    with pytest.raises(Conflict) as late:
        await shop.claim(offer, buyer(2), "k1")
    assert late.value.code == "sold_out"
    _, figure = await shop.offers.view(offer.id)
    assert figure is not None
    assert figure.remaining == 0


async def test_concurrent_retries_write_one_order_and_only_one_is_new(shop: Shop) -> None:
    offer = await shop.launch(quantity=5)
    answers = await asyncio.gather(*(shop.claim(offer, buyer(1), "same") for _ in range(5)))
    assert len({order.id for order, _ in answers}) == 1
    assert [created for _, created in answers].count(True) == 1
    assert await shop.stock.remaining(offer.id) == 4


async def test_the_keys_of_users_whose_ids_hold_colons_never_meet(shop: Shop) -> None:
    # Stored as "user:key": user "x:a" with key "k" and user "x" with key "a:k" must differ.
    offer = await shop.launch(quantity=3, limit=1)
    first, _ = await shop.claim(offer, Identity("x:a", Role.SHOPPER), "k")
    second, created = await shop.claim(offer, Identity("x", Role.SHOPPER), "a:k")
    assert created
    assert (first.buyer_id, second.buyer_id) == ("x:a", "x")
    assert await shop.stock.remaining(offer.id) == 1


async def test_an_ended_offer_shows_what_it_had_left_when_it_ended(shop: Shop) -> None:
    # Units given back after the end go to the product, not to the offer: its figure is fixed.
    stopped = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(stopped, buyer(1), "k1")
    await shop.offers.stop(stopped.id, HOST)
    await shop.orders.cancel(order.id, buyer(1))
    assert (await shop.offers.view(stopped.id))[1] == StockFigure(2, None)

    sold_out = await shop.launch(quantity=2, limit=1)
    orders = [(await shop.claim(sold_out, buyer(n), f"s{n}"))[0] for n in (1, 2)]
    await settle()  # the claim that took the last unit ends the offer
    await shop.orders.cancel(orders[0].id, buyer(1))
    offer, stock = await shop.offers.view(sold_out.id)
    assert (offer.end_reason, stock) == (EndReason.SOLD_OUT, StockFigure(0, None))


def test_keys_of_ids_without_colons_are_stored_as_before_the_escaping() -> None:
    # Orders and reservations stored by earlier versions are found by their retries.
    assert scoped_key("buyer-1", "k:1") == "buyer-1:k:1"
    assert scoped_key("x:a", "k") != scoped_key("x", "a:k")


@pytest.mark.parametrize("user_id", ["buyer-1", "x:a", "100%:", ":"])
def test_the_clients_own_key_comes_back_from_a_scoped_one(user_id: str) -> None:
    for key in ("k", "a:k", "%3A", ""):
        assert client_key(user_id, scoped_key(user_id, key)) == key
        assert client_key(user_id, f"{user_id}:{key}") == key  # as stored before the escaping


async def test_an_order_names_the_key_of_the_claim_that_made_it(shop: Shop) -> None:
    offer = await shop.launch(quantity=3, limit=2)
    order, _ = await shop.claim(offer, Identity("x:a", Role.SHOPPER), "phone:1")
    assert order_to_wire(order)["idempotency_key"] == "phone:1"
