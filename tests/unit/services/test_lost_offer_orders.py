"""Orders written while Redis lost their offer: each either holds a unit the stock counts, or
is cancelled; and a claim sent again after that never takes stock a second time."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Conflict, Unavailable
from server.domain.identity import scoped_key
from server.domain.offers import FlashOffer, RecoveredClaim, most_claims
from server.domain.orders import HOLDS_STOCK, Order, OrderStatus
from server.ports import OrderStore
from server.services.orders import OrderService
from server.stock_port import StockReservations
from tests.unit.services.flaky import FlakyStock
from tests.unit.services.shop import (
    ADDRESS,
    HeldCalls,
    Shop,
    buyer,
    offers_reading,
    open_shop,
    other_process,
    rebuild_paused_at,
    settle,
)


async def test_an_order_landing_while_a_stale_rebuild_runs_keeps_the_offer_from_overselling() -> (
    None
):
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    writing = HeldCalls(shop.orders_store)
    _, process_a = other_process(shop, orders=cast(OrderStore, writing))
    stock_b = FlakyStock(shop.stock)
    _, process_b = other_process(shop, stock=cast(StockReservations, stock_b))
    claim_a = asyncio.create_task(
        process_a.claim(offer.id, buyer(1), quantity=1, idempotency_key="a", address=ADDRESS)
    )
    await writing.entered.wait()  # A reserved the unit and is writing its order
    shop.stock.flush()  # Redis loses the offer

    async def a_lands() -> None:  # after B's rebuild read the orders, before it writes them
        writing.gate.set()
        await claim_a

    stock_b.before_rebuild = a_lands
    with pytest.raises(Conflict) as refused:  # B's claim finds the offer lost, and rebuilds it
        await process_b.claim(offer.id, buyer(2), quantity=1, idempotency_key="b", address=ADDRESS)
    assert refused.value.code == "sold_out"
    order_a, created = claim_a.result()
    assert created
    assert order_a.status is OrderStatus.PENDING_PAYMENT
    # A's attach found the offer lost, rebuilt it from orders that include its own, and B's
    # rebuild, which read them before, found the stock rebuilt and wrote nothing.
    standing = [o for o in await shop.orders_store.of_offer(offer.id) if o.status in HOLDS_STOCK]
    assert [o.id for o in standing] == [order_a.id]
    snapshot = await shop.stock.snapshot(offer.id)
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.held_by_buyer) == (0, {"buyer-1": 1})


async def written_across_a_stale_rebuild(
    shop: Shop, offer: FlashOffer, *, quantity: int, stock: StockReservations | None = None
) -> tuple[Order, bool]:
    """Buyer 1's claim with key "k", in another process: while its order is being written,
    Redis loses the offer and a third process rebuilds it from orders that lack this one."""
    writing = HeldCalls(shop.orders_store)
    _, process_a = other_process(shop, orders=cast(OrderStore, writing), stock=stock)
    claim = asyncio.create_task(
        process_a.claim(offer.id, buyer(1), quantity=quantity, idempotency_key="k", address=ADDRESS)
    )
    await writing.entered.wait()
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)  # no orders yet
    writing.gate.set()
    return await claim


async def test_an_order_a_stale_rebuild_missed_is_cancelled_and_its_retry_takes_no_stock() -> None:
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    with pytest.raises(Conflict) as refused:
        await written_across_a_stale_rebuild(shop, offer, quantity=1)
    assert refused.value.code == "claim_expired"
    (lost,) = await shop.orders_store.of_offer(offer.id)
    assert lost.status is OrderStatus.CANCELLED
    assert await shop.stock.remaining(offer.id) == 2

    # The buyer never heard that 409, and sends the claim again with the same key, twice.
    for _ in range(2):
        again, created = await shop.claim(offer, buyer(1), "k")
        assert (again.id, again.status, created) == (lost.id, OrderStatus.CANCELLED, False)
        snapshot = await shop.stock.snapshot(offer.id)
        assert snapshot is not None
        assert (snapshot.remaining, snapshot.held_by_buyer) == (2, {})
    await settle()  # the room heard "1 left" from the claims; it hears the units came back
    assert shop.events.of_type("offer.stock")[-1]["remaining"] == 2
    assert (await shop.claim(offer, buyer(2), "k2"))[1]  # both units are still for sale


@pytest.mark.parametrize("at", ["the per-user limit", "the most claims one may make", "sold out"])
async def test_a_retry_of_a_missed_order_gets_it_from_the_stock_whatever_a_new_claim_would_hear(
    at: str,
) -> None:
    """The store knew no key of an order a stale rebuild missed: cancelling it keeps its key,
    naming it, as a rebuild would. A retry then finds it from the stock alone, where a new
    claim is refused (a refusal never reads MongoDB)."""
    shop = await open_shop()
    offer = await shop.launch(quantity=2 if at == "sold out" else 5, limit=1)
    with pytest.raises(Conflict):  # cancelled: a stale rebuild missed it
        await written_across_a_stale_rebuild(shop, offer, quantity=1)
    (lost,) = await shop.orders_store.of_offer(offer.id)
    assert await shop.stock.knows_claim(offer.id, scoped_key(buyer(1).user_id, "k"))
    if at == "the per-user limit":
        await shop.claim(offer, buyer(1), "new")
    elif at == "the most claims one may make":
        for turn in range(most_claims(1) - 1):  # the lost order was one of the buyer's claims
            order, _ = await shop.claim(offer, buyer(1), f"new-{turn}")
            await shop.orders.cancel(order.id, buyer(1))
    else:
        for n in (2, 3):
            await shop.claim(offer, buyer(n), "k")
    with pytest.raises(Conflict) as refused:  # a new claim is refused
        await shop.claim(offer, buyer(1), "newer")
    assert refused.value.code == ("sold_out" if at == "sold out" else "limit_reached")
    again, created = await shop.claim(offer, buyer(1), "k")  # the lost answer's retry
    assert (again.id, again.status, created) == (lost.id, OrderStatus.CANCELLED, False)
    with pytest.raises(Conflict) as other:  # the key again, for other terms
        await shop.claim(offer, buyer(1), "k", quantity=2)
    assert other.value.code == "idempotency_key_reused"


async def test_a_retry_of_a_cancelled_order_whose_release_failed_holds_nothing() -> None:
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    forgetting = FlakyStock(shop.stock)
    forgetting.remembers_failing = 1  # Redis away as the cancel would have kept its key
    with pytest.raises(Conflict):  # cancelled: a stale rebuild missed it
        await written_across_a_stale_rebuild(
            shop, offer, quantity=1, stock=cast(StockReservations, forgetting)
        )
    assert not await shop.stock.knows_claim(offer.id, scoped_key(buyer(1).user_id, "k"))
    (lost,) = await shop.orders_store.of_offer(offer.id)
    away = FlakyStock(shop.stock)
    away.releases_failing = 1
    _, process = other_process(shop, stock=cast(StockReservations, away))
    with pytest.raises(Unavailable):  # the retry reserved a unit, then could not give it back
        await process.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    # Nothing names the cancelled order on the key yet: the next retry gives the unit back.
    again, created = await process.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    assert (again.id, again.status, created) == (lost.id, OrderStatus.CANCELLED, False)
    snapshot = await shop.stock.snapshot(offer.id)
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.held_by_buyer) == (2, {})


class KeyKeptWatched(FlakyStock):
    """Gives units back only once the key's keeping has begun."""

    def __init__(self, shared: MemoryStockReservations) -> None:
        super().__init__(shared)
        self.keeping = asyncio.Event()
        self.before_release = self.keeping.wait

    async def remember_released(self, offer_id: str, claim: RecoveredClaim) -> bool:
        self.keeping.set()
        return await super().remember_released(offer_id, claim)


async def test_a_lost_orders_units_go_back_as_its_key_is_kept_not_after() -> None:
    """One after the other, a Redis that hangs held the claim for two deadlines."""
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    watched = KeyKeptWatched(shop.stock)
    with pytest.raises(Conflict):  # cancelled: a stale rebuild missed it
        await asyncio.wait_for(
            written_across_a_stale_rebuild(
                shop, offer, quantity=1, stock=cast(StockReservations, watched)
            ),
            timeout=10,  # not a measure: one after the other, the release would wait for good
        )
    assert await shop.stock.knows_claim(offer.id, scoped_key(buyer(1).user_id, "k"))
    assert await shop.stock.remaining(offer.id) == 2


class AttachAway:
    """The shop's reservations, whose attaches fail: Redis away after the order was written."""

    def __init__(self, shared: StockReservations) -> None:
        self._shared = shared

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def attach_order(self, *args: Any, **kwargs: Any) -> Any:
        raise Unavailable("live data is unreachable, try again")


async def test_a_retry_with_other_terms_after_its_key_was_lost_takes_no_stock() -> None:
    shop = await open_shop()
    offer = await shop.launch(quantity=5, limit=5)
    stock = cast(StockReservations, AttachAway(shop.stock))
    with pytest.raises(Unavailable):  # written, but its attach failed
        await written_across_a_stale_rebuild(shop, offer, quantity=2, stock=stock)
    with pytest.raises(Conflict) as refused:  # sent again, for one unit instead of two
        await shop.claim(offer, buyer(1), "k", quantity=1)
    assert refused.value.code == "idempotency_key_reused"
    snapshot = await shop.stock.snapshot(offer.id)
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.held_by_buyer) == (5, {})  # nothing taken for it


async def test_a_burst_of_claims_on_a_lost_offer_rebuilds_it_twice_at_most(shop: Shop) -> None:
    # Each rebuild reads every order of the offer: one for each of a burst's claims cost a
    # process a minute of CPU with 1,500 claims on 250 orders, and most claims their deadline.
    offer = await shop.launch(quantity=50, limit=1)
    for n in range(10):
        await shop.claim(offer, buyer(n), "k")
    shop.stock.flush()
    reading = HeldCalls(shop.orders_store, "of_offer", answer_late=True)
    offers = offers_reading(shop, reading)
    orders = OrderService(
        shop.offers_store,
        shop.orders_store,
        shop.products,
        shop.stock,
        offers,
        shop.events.send_private,
        shop.clock,
        rooms=shop.rooms,
    )
    burst = [
        asyncio.create_task(
            orders.claim(offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS)
        )
        for n in range(10, 50)
    ]
    await asyncio.wait_for(reading.entered.wait(), 1)  # the first rebuild is reading
    reading.gate.set()
    answers = await asyncio.gather(*burst)
    assert all(created for _, created in answers)
    assert reading.calls <= 2
    assert await shop.stock.remaining(offer.id) == 0


async def test_a_rebuild_read_before_a_pause_does_not_reopen_units_sold_since() -> None:
    # A read the orders to rebuild a lost offer, then paused before writing the stock; B rebuilt
    # it meanwhile and sold its last unit, and Redis lost the offer again: A's stock, written
    # once it resumed, knew one order of two, and sold the unit again.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    await shop.claim(offer, buyer(1), "k1")
    shop.stock.flush()  # Redis loses the offer
    rebuild_a, writing = await rebuild_paused_at(shop, offer, "rebuild")  # A read one order
    _, created = await shop.claim(offer, buyer(2), "k2")  # B rebuilds it, and sells
    assert created
    shop.stock.flush()  # lost again
    writing.gate.set()  # A resumes, and writes what it read
    await rebuild_a
    with pytest.raises(Conflict) as refused:
        await shop.claim(offer, buyer(3), "k3")
    assert refused.value.code == "sold_out"
    snapshot = await shop.stock.snapshot(offer.id)
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.held_by_buyer) == (0, {"buyer-1": 1, "buyer-2": 1})


async def test_units_a_retry_attached_to_an_order_being_cancelled_as_lost_go_back() -> None:
    """Process A finds its order's key unknown to a stale rebuild and is about to cancel it;
    meanwhile the claim sent again (process B) reserves fresh units and attaches the order to
    them. Cancelled, the order holds nothing: those units go back."""
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    cancelling = HeldCalls(shop.orders_store, "save_move")
    writing = HeldCalls(cancelling, "create")
    away = FlakyStock(shop.stock)
    away.releases_failing = 1  # and A's give-back fails: housekeeping finishes it
    _, process_a = other_process(
        shop, orders=cast(OrderStore, writing), stock=cast(StockReservations, away)
    )
    claim = asyncio.create_task(
        process_a.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await writing.entered.wait()
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)  # no orders yet
    writing.gate.set()
    await cancelling.entered.wait()  # A: the key unknown, the order about to be cancelled
    again, created = await shop.claim(offer, buyer(1), "k")  # B: fresh units, attached
    assert (again.status, created) == (OrderStatus.PENDING_PAYMENT, False)
    assert await shop.stock.remaining(offer.id) == 1
    cancelling.gate.set()
    with pytest.raises(Conflict):
        await claim
    (cancelled,) = await shop.orders_store.of_offer(offer.id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert await shop.stock.remaining(offer.id) == 1
    assert await shop.orders.return_units_due() == 1
    snapshot = await shop.stock.snapshot(offer.id)
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.held_by_buyer) == (2, {})
