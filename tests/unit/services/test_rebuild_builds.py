"""Redis losing an offer twice: the next rebuild tells the claims answered on the last stock
checked from orders that landed late by the stock each order names (its build), whatever the
processes' clocks or Redis's (a failover), and whatever the retries."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from server.adapters import memory_reservations
from server.domain.errors import Conflict, Unavailable
from server.domain.offers import FlashOffer
from server.domain.orders import Order, OrderStatus
from server.ports import OrderStore
from server.stock_port import StockReservations
from tests.unit.services.double_loss import (
    answered_try_again,
    notes_fail_once,
    settled_after_losing_it_again,
)
from tests.unit.services.shop import (
    ADDRESS,
    HeldCalls,
    HeldWrites,
    Shop,
    buyer,
    offers_reading,
    open_shop,
    other_process,
    rebuild_paused_at,
    units_held,
)


async def two_late_orders_after_a_rebuild(shop: Shop) -> tuple[FlashOffer, HeldWrites, HeldWrites]:
    """An offer of 2 units, limit 1: buyers 4 and 1 hear "try again"; Redis loses the offer, a
    rebuild reads no order (2 units) and lets claims in; then both late orders land. Buyer 4
    never tries again."""
    offer = await shop.launch(quantity=2, limit=1)
    never_retried = await answered_try_again(shop, offer, n=4)
    retried = await answered_try_again(shop, offer, n=1)
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)
    await never_retried.land()
    await retried.land()
    return offer, never_retried, retried


def redis_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The reservation store's clock (Redis's), set apart by the seconds in the list it
    answers: a failover to a Redis whose clock is behind."""
    offset = [0]
    clock = SimpleNamespace(
        time=lambda: time.time() + offset[0], time_ns=lambda: time.time_ns() + offset[0] * 10**9
    )
    monkeypatch.setattr(memory_reservations, "time", clock)
    return offset


class CancelFailsOnce:
    """An order store whose first move of an order (a cancel) fails: MongoDB away a moment."""

    def __init__(self, shared: OrderStore) -> None:
        self._shared = shared
        self.failures = [Unavailable("the database is unreachable, try again")]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def save_move(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            raise self.failures.pop()
        return await self._shared.save_move(*args, **kwargs)


async def test_a_late_order_is_told_from_the_claims_on_a_rebuilt_stock_by_no_clock() -> None:
    # Creation times against the rebuild's read: buyer 1's process, its clock 1.5 s ahead,
    # created its late order after the read by its own clock, and before the answered one.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    await shop.claim(offer, buyer(0), "k0")
    writes = await answered_try_again(shop, offer, clock_ahead=timedelta(seconds=1.5))
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # reads the orders, and lets claims in
    shop.clock.advance(seconds=1)
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, answered)


async def test_a_retry_answered_with_its_late_order_keeps_its_unit_over_other_late_ones() -> None:
    # The late order names the lost stock's build, not the rebuilt stock's that holds its
    # unit once its retry attached it: it counted with the late ones, by age.
    shop = await open_shop()
    offer, never_retried, retried = await two_late_orders_after_a_rebuild(shop)
    order, created = await shop.claim(offer, buyer(1), "k1")  # reserved again, attached
    assert (order.id, created) == (retried.held[0].id, False)
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    await settled_after_losing_it_again(shop, never_retried, order, answered)


async def test_a_stock_rebuilt_by_a_redis_whose_clock_is_behind_comes_after_the_last_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failover to a Redis an hour behind: the new stock's build was below the one checked
    # last, so the late order of that one counted before the new stock's answered claim.
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    shop.stock.flush()  # Redis loses the offer
    await shop.offers.rebuild(offer.id)  # checked: its build noted
    writes = await answered_try_again(shop, offer)  # on that stock
    redis_clock(monkeypatch)[0] = -3600
    shop.stock.flush()  # the failover
    answered, created = await shop.claim(offer, buyer(2), "k2")  # rebuilt, and sold
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, answered)


async def test_a_stock_written_after_a_later_check_comes_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read the orders and the last build checked (b1), and paused. An hour on, another stock
    # was rebuilt and checked (b2), a claim on it heard "try again", and it was lost in a
    # failover to a Redis 30 minutes behind. A wrote its stock above b1, below b2, checked it
    # and let claims in: its answered claim counted after the late order of b2.
    clock = redis_clock(monkeypatch)
    shop = await open_shop()
    offer = await shop.launch(quantity=1, limit=1)
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)  # b1, checked
    shop.stock.flush()
    rebuild_a, writing = await rebuild_paused_at(shop, offer, "rebuild")  # A has read b1
    clock[0] = 3600
    await shop.offers.rebuild(offer.id)  # b2, checked here
    writes = await answered_try_again(shop, offer)  # on b2
    shop.stock.flush()  # the failover
    clock[0] = 1800
    writing.gate.set()  # A writes its stock: below b2, dropped at its check, built again
    await rebuild_a
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    await writes.land()
    await settled_after_losing_it_again(shop, writes, answered)


async def test_a_retry_whose_note_failed_notes_its_order_when_sent_again() -> None:
    # The note came after the attach: the retry that followed found the order attached and
    # answered it, unnoted, and it counted with the late orders by age.
    shop = await open_shop()
    offer, never_retried, retried = await two_late_orders_after_a_rebuild(shop)
    notes_fail_once(shop)
    with pytest.raises(Unavailable):
        await shop.claim(offer, buyer(1), "k1")  # reserved again; its order's note fails
    order, created = await shop.claim(offer, buyer(1), "k1")  # sent again
    assert (order.id, created) == (retried.held[0].id, False)
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    await settled_after_losing_it_again(shop, never_retried, order, answered)


@pytest.mark.parametrize("lost_again", [False, True])
async def test_a_retry_s_note_landing_late_never_takes_an_answered_one_s_unit(
    lost_again: bool,
) -> None:
    # The retry attached its late order, its note on its way; the stock sold its last unit and
    # was lost, and rebuilt without the order. The note landed then, noting held an order
    # that stock did not hold (a flag, whatever the stock), and no round checked it again:
    # three pending orders held two units. Lost once more before it landed, the rebuild the
    # retry's attach asked for counted it before the answered order.
    shop = await open_shop()
    offer, _, _ = await two_late_orders_after_a_rebuild(shop)
    noting = HeldCalls(shop.orders_store, "checked_after_rebuild")
    _, retrier = other_process(shop, orders=cast(OrderStore, noting))
    retry = asyncio.create_task(
        retrier.claim(offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS)
    )
    await noting.entered.wait()  # reserved again, its order's note on its way
    answered, created = await shop.claim(offer, buyer(2), "k2")  # the last unit
    assert created
    shop.stock.flush()
    _, survivor = other_process(shop)
    await survivor.settle_late_orders()  # rebuilt and checked, without buyer 1's order
    if lost_again:
        shop.stock.flush()
    noting.gate.set()  # the note lands
    with pytest.raises(Conflict) as refused:
        await retry
    assert refused.value.code == "claim_expired"
    for _ in range(3):
        await survivor.settle_late_orders()
    assert (await shop.orders_store.get(answered.id)).status is OrderStatus.PENDING_PAYMENT
    assert await units_held(shop, offer.id) == 2


async def retry_noted_then_cancel_failed(shop: Shop) -> tuple[FlashOffer, Order]:
    """Buyer 1's retry reserves again, answered late: meanwhile the stock sold its last unit
    (to buyer 2, answered), was lost, and was rebuilt and checked without buyer 1's order.
    The retry's attach then finds its units gone, and its cancel fails."""
    offer, _, retried = await two_late_orders_after_a_rebuild(shop)
    claims = HeldCalls(shop.stock, "claim", answer_late=True)
    _, retrier = other_process(
        shop,
        orders=cast(OrderStore, CancelFailsOnce(shop.orders_store)),
        stock=cast(StockReservations, claims),
    )
    retry = asyncio.create_task(
        retrier.claim(offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS)
    )
    await claims.entered.wait()
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    shop.stock.flush()
    _, survivor = other_process(shop)
    await survivor.settle_late_orders()  # rebuilt and checked, without buyer 1's order
    claims.gate.set()
    with pytest.raises(Unavailable):
        await retry
    (late,) = retried.held
    assert (await shop.orders_store.get(late.id)).status is OrderStatus.PENDING_PAYMENT
    return offer, answered


@pytest.mark.parametrize("lost_again", [False, True])
async def test_an_order_a_retry_noted_whose_cancel_failed_is_cancelled_by_a_round(
    lost_again: bool,
) -> None:
    # Noted held (a flag, whatever the stock), no round checked it again: it stayed pending,
    # holding nothing, and a loss after it counted it before the answered order.
    shop = await open_shop()
    offer, answered = await retry_noted_then_cancel_failed(shop)
    if lost_again:
        shop.stock.flush()
    _, survivor = other_process(shop)
    for _ in range(3):
        await survivor.settle_late_orders()
    assert (await shop.orders_store.get(answered.id)).status is OrderStatus.PENDING_PAYMENT
    assert await units_held(shop, offer.id) == 2


async def test_a_watched_offer_no_stock_of_which_was_checked_has_each_order_checked_once() -> None:
    # A rebuild that found the stock there wrote nothing and checked nothing: the orders a
    # round found attached were noted by no build, and attached again every round.
    shop = await open_shop()
    offer = await shop.launch(quantity=5, limit=1)
    for n in range(1, 4):
        await shop.claim(offer, buyer(n), f"k{n}")
    await shop.offers.rebuild(offer.id)  # watched, and nothing else
    attaching = HeldCalls(shop.stock, "attach_order")
    attaching.gate.set()
    _, housekeeper = other_process(shop, stock=cast(StockReservations, attaching))
    for _ in range(5):
        await housekeeper.settle_late_orders()
    assert attaching.calls == 3


@pytest.mark.parametrize("slow_read", ["checked_of_offer", "last_stock_checked"])
async def test_a_rebuild_whose_reads_straddle_another_s_check_keeps_the_answered_orders(
    slow_read: str,
) -> None:
    # The orders held and the last build checked were read together: one read before another
    # process's check, one after, the held orders matched no build and counted by age.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    late = await answered_try_again(shop, offer)  # the oldest order, its write held
    answered, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)  # A: holds buyer 2's, checked
    await late.land()  # A does not know it
    last, created = await shop.claim(offer, buyer(3), "k3")  # A's last unit
    assert created
    shop.stock.flush()  # lost again before a round checked the late order
    slow = HeldCalls(shop.orders_store, slow_read)
    rebuild = asyncio.create_task(offers_reading(shop, slow).rebuild(offer.id))
    await slow.entered.wait()
    await shop.offers.rebuild(offer.id)  # B, from A's notes, checked here
    shop.stock.flush()  # B lost before any claim on it
    slow.gate.set()  # the slow read now sees B's check
    await rebuild  # C written, checked, let in
    await settled_after_losing_it_again(shop, late, answered, last)


async def a_rebuild_reading_a_lost_stock() -> tuple[
    Shop, Order, Order, HeldCalls, asyncio.Task[None]
]:
    """Stock A, rebuilt holding buyer 2's order and checked, knows nothing of the late order
    that lands next (the oldest); buyer 3 takes A's last unit (the youngest), and A is lost.
    A rebuild has read the orders and A's build, and is held there. The shop, buyer 2's
    order, buyer 3's (answered), the held read, and the rebuild."""
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    late = await answered_try_again(shop, offer)
    cancelled, created = await shop.claim(offer, buyer(2), "k2")
    assert created
    shop.clock.advance(seconds=1)
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)
    await late.land()
    answered, created = await shop.claim(offer, buyer(3), "k3")
    assert created
    shop.stock.flush()
    slow = HeldCalls(shop.orders_store, "checked_of_offer")
    rebuild = asyncio.create_task(offers_reading(shop, slow).rebuild(offer.id))
    await slow.entered.wait()
    return shop, cancelled, answered, slow, rebuild


async def assert_kept_after_two_rounds(shop: Shop, answered: Order) -> None:
    """Two rounds of late orders in a process that survived: the answered order keeps its
    unit."""
    _, survivor = other_process(shop)
    for _ in range(2):
        await survivor.settle_late_orders()
    assert (await shop.orders_store.get(answered.id)).status is OrderStatus.PENDING_PAYMENT


async def test_a_rebuild_read_before_a_cancel_and_a_later_check_keeps_the_answered_order() -> None:
    # Counted first whatever was noted at or above the last build read: an order cancelled
    # after the rebuild's read, which the later check left out, kept its old note, counted
    # with that check's orders by age, and the answered one lost its unit.
    shop, cancelled, answered, slow, rebuild = await a_rebuild_reading_a_lost_stock()
    await shop.orders.cancel(cancelled.id, buyer(2))  # its release rebuilds B, checked
    shop.stock.flush()  # B lost before any claim
    slow.gate.set()
    await rebuild
    await assert_kept_after_two_rounds(shop, answered)
    assert await shop.stock.remaining(answered.offer_id) == 0  # held by buyers 1 and 3


async def test_a_check_whose_build_note_failed_leaves_no_rebuild_stuck() -> None:
    # Its held orders noted by a build never noted checked: read as a check made between a
    # rebuild's reads, every later rebuild read again, gave up, and claims waited for good.
    shop = await open_shop()
    offer = await shop.launch(quantity=2, limit=1)
    await shop.claim(offer, buyer(1), "k1")
    shop.stock.flush()
    store: Any = shop.orders_store
    noting = store.note_stock_checked

    async def away(offer_id: str, build: int) -> int:
        raise Unavailable("the database is unreachable, try again")

    store.note_stock_checked = away  # MongoDB away a moment
    with pytest.raises(Unavailable):
        await shop.offers.rebuild(offer.id)  # the held order noted, the build not
    store.note_stock_checked = noting
    shop.stock.flush()  # that stock lost before its check
    _, created = await shop.claim(offer, buyer(2), "k2")
    assert created


async def test_an_offer_whose_last_build_checked_is_unknown_is_rebuilt_all_the_same() -> None:
    # As after an upgrade from a version that kept it with the watch: orders noted held by a
    # build no rebuild can read. Counted by age then, as before any rebuild; not paused.
    shop = await open_shop()
    offer = await shop.launch(quantity=3, limit=1)
    await shop.claim(offer, buyer(1), "k1")
    shop.stock.flush()
    await shop.offers.rebuild(offer.id)  # buyer 1's order noted held by its build
    shop.orders_store._checked_builds.pop(offer.id)
    shop.stock.flush()
    _, created = await shop.claim(offer, buyer(2), "k2")
    assert created


async def test_a_round_notes_an_order_held_only_by_a_build_that_held_it() -> None:
    # A round read the last build checked (A), and attached its orders once another stock (B)
    # was checked: it noted them held by A, which never held the late one, and a rebuild that
    # had read A counted that late order first, before an answered one.
    shop, cancelled, answered, slow, rebuild = await a_rebuild_reading_a_lost_stock()
    attaching = HeldCalls(shop.stock, "attach_order")
    _, housekeeper = other_process(shop, stock=cast(StockReservations, attaching))
    round_ = asyncio.create_task(housekeeper.settle_late_orders())
    await attaching.entered.wait()  # the round read A's build; its attaches on their way
    await shop.orders.cancel(cancelled.id, buyer(2))  # its release rebuilds B, checked
    attaching.gate.set()
    await round_  # attached to B
    shop.stock.flush()  # B lost before any claim
    slow.gate.set()
    await rebuild
    await assert_kept_after_two_rounds(shop, answered)
