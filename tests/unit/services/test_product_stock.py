"""A product's offers share its stock: a launch books its quantity, which stays booked while the
offer runs; once its end stops its stock, only what it had taken then, until it has settled;
from then on the offer holds only what its orders still claim, and no claim reserved before
the end can become an order any more. Launches of one product racing each other book it once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import pytest

from server.adapters.memory_orders import MemoryOfferStore
from server.domain.errors import Conflict, Unavailable
from server.domain.offers import LATE_ORDERS, FlashOffer
from server.domain.orders import OrderStatus
from server.ports import OfferStore, OrderStore, ProductStore
from server.services.housekeeping import Housekeeper
from server.services.offers import OfferService
from tests.unit.services.flaky import rebuild_that_read_the_offer_before_its_stop
from tests.unit.services.shop import (
    ADDRESS,
    HOST,
    STOCK,
    HeldCalls,
    Shop,
    buyer,
    launch_through,
    offer_with_orders,
    other_process,
)


async def test_offers_of_a_product_cannot_book_more_than_its_stock(shop: Shop) -> None:
    await shop.launch(quantity=30, limit=1)
    with pytest.raises(Conflict) as refused:
        await shop.launch(quantity=21, limit=1)
    assert refused.value.code == "insufficient_stock"
    assert "20 units of the product's stock of 50" in refused.value.message
    await shop.launch(quantity=20, limit=1)  # exactly what is left
    with pytest.raises(Conflict):
        await shop.launch(quantity=1, limit=1)


async def settle(shop: Shop) -> None:
    """Past LATE_ORDERS after the end, and housekeeping's settling step has run."""
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds())
    await shop.orders.settle_due()


async def test_a_stopped_offer_books_what_it_had_taken_until_settled_then_what_it_sold(
    shop: Shop,
) -> None:
    offer = await offer_with_orders(shop, STOCK, 3)
    # A claimer that died after reserving, before writing its order: until the offer settles,
    # its shopper may send the claim again and get the order.
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())
    await shop.offers.stop(offer.id, HOST)
    assert (await shop.offers_store.get(offer.id)).taken_at_end == 4
    with pytest.raises(Conflict) as refused:
        await shop.launch(quantity=STOCK - 3, limit=1)
    assert "46 units of the product's stock of 50" in refused.value.message
    # The host drops the price on what is left, at once: no wait for the settling.
    again = await shop.launch(quantity=STOCK - 4, limit=1)
    await shop.offers.stop(again.id, HOST)  # nothing taken: books nothing
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds() - 1)
    assert await shop.orders.settle_due() == 0  # not yet
    with pytest.raises(Conflict):
        await shop.launch(quantity=STOCK - 3, limit=1)
    await settle(shop)
    assert (await shop.offers_store.get(offer.id)).settled_at is not None
    await shop.launch(quantity=STOCK - 3, limit=1)  # the 3 sold stay sold; the orphan is back
    with pytest.raises(Conflict):
        await shop.launch(quantity=1, limit=1)


async def test_an_offer_whose_stock_was_lost_when_it_stopped_books_its_quantity(
    shop: Shop,
) -> None:
    """Its stop could not tell what it had taken: only settling, from its orders, can."""
    offer = await offer_with_orders(shop, STOCK, 3)
    shop.stock.flush()
    await shop.offers.stop(offer.id, HOST)
    assert (await shop.offers_store.get(offer.id)).taken_at_end is None
    with pytest.raises(Conflict):
        await shop.launch(quantity=1, limit=1)
    await settle(shop)
    await shop.launch(quantity=STOCK - 3, limit=1)


async def test_housekeeping_settles_ended_offers(shop: Shop) -> None:
    offer = await shop.launch(quantity=STOCK, limit=1)
    await shop.offers.stop(offer.id, HOST)
    housekeeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    await housekeeper.run_once()
    assert (await shop.offers_store.get(offer.id)).settled_at is None
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds())
    await housekeeper.run_once()
    assert (await shop.offers_store.get(offer.id)).settled_at == shop.clock()


async def test_a_stop_sent_again_does_not_put_off_the_settling(shop: Shop) -> None:
    offer = await shop.launch(quantity=STOCK, limit=1)
    await shop.offers.stop(offer.id, HOST)
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds() - 1)
    await shop.offers.stop(offer.id, HOST)  # the host's app sends it again
    shop.clock.advance(seconds=1)
    assert await shop.orders.settle_due() == 1


async def test_an_order_cancelled_after_its_offer_settled_frees_its_unit(shop: Shop) -> None:
    offer = await shop.launch(quantity=STOCK, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k")
    await shop.offers.stop(offer.id, HOST)
    await settle(shop)
    await shop.launch(quantity=STOCK - 1, limit=1)
    with pytest.raises(Conflict):
        await shop.launch(quantity=1, limit=1)
    await shop.orders.cancel(order.id, buyer(1))
    await shop.launch(quantity=1, limit=1)


async def test_an_order_refunded_after_its_offer_settled_frees_its_unit(shop: Shop) -> None:
    # No refund endpoint yet (payments come later): the store's move stands in for it.
    offer = await shop.launch(quantity=STOCK, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k")
    for to in (OrderStatus.PAID, OrderStatus.REFUNDED):
        moved = await shop.orders_store.get(order.id)
        before = moved.status
        moved.move(to, at=shop.clock(), by="system", reason="test")
        await shop.orders_store.save_move(moved, expected=before)
    await shop.offers.stop(offer.id, HOST)
    await settle(shop)
    await shop.launch(quantity=STOCK, limit=1)  # the refunded unit is the product's again


async def test_a_claim_reserved_before_the_end_cannot_become_an_order_once_settled(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=STOCK, limit=1)
    # A claimer that died after reserving, before writing its order (the reaper, which serves
    # running offers, had not got to it before the end).
    await shop.stock.claim(offer.id, "buyer-1", 1, "buyer-1:k", shop.clock())
    await shop.offers.stop(offer.id, HOST)
    await settle(shop)
    await shop.launch(quantity=STOCK, limit=1)  # the reservation no longer books a unit...
    with pytest.raises(Conflict) as refused:  # ...so the shopper's retry cannot turn it into one
        await shop.claim(offer, buyer(1), "k")
    assert refused.value.code == "claim_expired"
    assert await shop.orders_store.of_offer(offer.id) == []


async def test_a_claim_sent_again_before_settling_gets_its_order_and_keeps_its_unit(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=STOCK, limit=1)
    await shop.stock.claim(offer.id, "buyer-1", 1, "buyer-1:k", shop.clock())
    await shop.offers.stop(offer.id, HOST)
    _, created = await shop.claim(offer, buyer(1), "k")  # within LATE_ORDERS: still an order
    assert created
    await settle(shop)
    await shop.launch(quantity=STOCK - 1, limit=1)
    with pytest.raises(Conflict):
        await shop.launch(quantity=1, limit=1)


class InterleavingOffers:
    """The shop's offer store, answering each read of a product's offers after a turn of the
    event loop, as a real database would: two launches then read the same offers."""

    def __init__(self, shared: MemoryOfferStore) -> None:
        self._shared = shared

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def of_product(self, product_id: str) -> list[FlashOffer]:
        offers = await self._shared.of_product(product_id)
        await asyncio.sleep(0)
        return offers


def racing_processes(shop: Shop) -> list[OfferService]:
    """Two processes whose launches of one product read its offers at the same moment."""
    return [
        other_process(shop, offers_store=cast(OfferStore, InterleavingOffers(shop.offers_store)))[0]
        for _ in range(2)
    ]


async def test_launches_racing_for_one_product_book_its_stock_once(shop: Shop) -> None:
    services = racing_processes(shop)
    launches = [launch_through(service, shop, quantity=30) for service in services]
    results = await asyncio.gather(*launches, return_exceptions=True)
    launched = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(launched) == 1
    assert [error.code for error in refused] == ["insufficient_stock"]
    assert [offer.quantity for offer in await shop.offers_store.of_product(shop.product_id)] == [30]


async def test_an_order_landing_after_its_offer_settled_on_a_lost_stock_is_cancelled(
    shop: Shop,
) -> None:
    slow = HeldCalls(shop.orders_store)
    _, orders = other_process(shop, orders=cast(OrderStore, slow))
    first = await shop.launch(quantity=STOCK, limit=1)
    claim = asyncio.ensure_future(
        orders.claim(first.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await slow.entered.wait()  # reserved; the order is being written
    await shop.offers.stop(first.id, HOST)
    shop.stock.flush()  # Redis lost everything, the settling's release with it
    await settle(shop)
    await shop.launch(quantity=STOCK, limit=1)  # the whole stock, booked again
    slow.gate.set()
    with pytest.raises(Conflict) as refused:
        await claim
    assert refused.value.code == "claim_expired"
    [order] = await shop.orders_store.of_offer(first.id)
    assert order.status is OrderStatus.CANCELLED


async def test_a_stock_that_a_failed_rebuild_left_unconfirmed_sells_nothing(shop: Shop) -> None:
    # An hour long: it would still be selling after its settling.
    first = await shop.launch(quantity=STOCK, limit=1, duration=3600)
    shop.stock.flush()
    await rebuild_that_read_the_offer_before_its_stop(shop, first, rebuilt_meanwhile=False)
    # The next claim's rebuild reads the offer ended, and stops what the first left.
    with pytest.raises(Conflict) as refused:
        await shop.claim(first, buyer(2), "k")
    assert refused.value.code == "offer_not_active"
    await settle(shop)
    await shop.launch(quantity=STOCK, limit=1)
    with pytest.raises(Conflict) as again:  # the settled offer sells no more
        await shop.claim(first, buyer(3), "k")
    assert again.value.code == "offer_not_active"


async def test_settling_deals_with_a_reservation_stamped_by_a_clock_ahead(shop: Shop) -> None:
    """Every reservation, however new by this process's clock, is attached or given back
    before the offer is recorded settled: another process's clock may be minutes ahead."""
    offer = await shop.launch(quantity=3, limit=1, duration=600)
    ahead = shop.clock() + timedelta(minutes=5)
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", ahead)  # its claimer died
    await shop.offers.stop(offer.id, HOST)
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds())
    assert await shop.orders.settle_due() == 1
    assert await shop.stock.pending_without_order(offer.id, ahead + timedelta(hours=1)) == []


async def test_offers_claimed_here_are_remembered_for_an_hour(shop: Shop) -> None:
    """Housekeeping reaps their orphans even with no viewer of the room connected here."""
    offer = await shop.launch(quantity=3, limit=1)
    await shop.claim(offer, buyer(1), "k1")
    assert shop.orders.recently_claimed_offers() == [offer.id]
    shop.clock.advance(minutes=59)
    assert shop.orders.recently_claimed_offers() == [offer.id]
    shop.clock.advance(minutes=2)
    assert shop.orders.recently_claimed_offers() == []


async def test_an_offer_with_more_pending_reservations_than_a_batch_settles_over_rounds(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.services.reaper.PENDING_BATCH", 2)
    monkeypatch.setattr("server.adapters.memory_reservations.PENDING_BATCH", 2)
    offer = await shop.launch(quantity=STOCK, limit=1)
    for n in range(3):  # claimers that died before writing their orders
        await shop.stock.claim(offer.id, f"buyer-{n}", 1, f"buyer-{n}:k", shop.clock())
    await shop.offers.stop(offer.id, HOST)
    shop.clock.advance(seconds=LATE_ORDERS.total_seconds())
    assert await shop.orders.settle_due() == 0  # two given back; one left for the next round
    assert await shop.orders.settle_due() == 1
    await shop.launch(quantity=STOCK, limit=1)


async def test_a_restocked_product_can_be_offered_again(shop: Shop) -> None:
    offer = await shop.launch(quantity=STOCK, limit=1)
    await shop.claim(offer, buyer(1), "k")
    await shop.offers.stop(offer.id, HOST)
    await settle(shop)
    with pytest.raises(Conflict):  # 49 left
        await shop.launch(quantity=STOCK, limit=1)
    await shop.offers.set_product_stock(HOST, shop.product_id, STOCK + 1)  # 50 more arrived
    await shop.launch(quantity=STOCK, limit=1)
    with pytest.raises(Conflict):
        await shop.launch(quantity=1, limit=1)


async def test_a_count_below_what_running_offers_booked_is_refused(shop: Shop) -> None:
    offer = await shop.launch(quantity=20, limit=1)
    await shop.claim(offer, buyer(1), "k")
    with pytest.raises(Conflict) as refused:  # the seller counts 5 left: 20 may yet be sold
        await shop.offers.set_product_stock(HOST, shop.product_id, 5)
    assert refused.value.code == "stock_booked"
    assert "20" in refused.value.message
    assert (await shop.products.get(shop.product_id)).stock == STOCK
    await shop.offers.set_product_stock(HOST, shop.product_id, 20)  # exactly what is booked
    await shop.offers.stop(offer.id, HOST)
    await settle(shop)  # now it books only its one order's unit
    assert (await shop.offers.set_product_stock(HOST, shop.product_id, 1)).stock == 1


async def test_a_count_made_while_a_launch_stored_its_offer_withdraws_that_offer(
    shop: Shop,
) -> None:
    """The launch checked 30 against 50; a count to 10 read the bookings before the offer was
    stored. The launch finds the figure it checked gone and takes its offer back."""
    storing = HeldCalls(shop.offers_store)
    launching, _ = other_process(shop, offers_store=cast(OfferStore, storing))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=30, key="drop-1"))
    await asyncio.wait_for(storing.entered.wait(), 2)
    assert (await shop.offers.set_product_stock(HOST, shop.product_id, 10)).stock == 10
    storing.gate.set()
    with pytest.raises(Conflict) as refused:
        await launch
    assert refused.value.code == "stock_changed"
    [withdrawn] = await shop.offers_store.of_product(shop.product_id)
    assert withdrawn.end_reason is not None
    assert withdrawn.end_reason.value == "stopped"
    assert await shop.offers_store.open_in_room(shop.room_id) == []
    # It never started for the room, which hears its end (a viewer may have had it in a
    # snapshot) and nothing else.
    assert shop.events.of_type("offer.started") == []
    assert [e["offer_id"] for e in shop.events.of_type("offer.ended")] == [withdrawn.id]
    # Sent again with its key, the launch is tried afresh against the count, not answered
    # with the withdrawn offer.
    with pytest.raises(Conflict) as again:
        await launch_through(shop.offers, shop, quantity=30, key="drop-1")
    assert again.value.code == "insufficient_stock"
    assert (await shop.products.get(shop.product_id)).stock == 10
    # The withdrawn offer took nothing, so it books nothing: what the count left fits at once.
    offer, _ = await launch_through(shop.offers, shop, quantity=10, key="drop-1")
    assert offer.end_reason is None


async def test_a_count_that_read_the_bookings_before_a_launch_counted_reads_them_again(
    shop: Shop,
) -> None:
    """The count read no bookings and was about to store 20; a launch of 30 got in first. The
    count sees the launch counted, reads again, and is refused: nothing is overbooked."""
    storing = HeldCalls(shop.products, "set_stock")
    counting, _ = other_process(shop, products=cast(ProductStore, storing))
    count = asyncio.create_task(counting.set_product_stock(HOST, shop.product_id, 20))
    await asyncio.wait_for(storing.entered.wait(), 2)
    offer, _ = await launch_through(shop.offers, shop, quantity=30)
    storing.gate.set()
    with pytest.raises(Conflict) as refused:
        await count
    assert refused.value.code == "stock_booked"
    assert (await shop.products.get(shop.product_id)).stock == STOCK
    assert (await shop.offers_store.get(offer.id)).end_reason is None  # still selling
    # A count that fits what the launch booked is stored.
    assert (await counting.set_product_stock(HOST, shop.product_id, 30)).stock == 30


async def test_a_restock_made_while_a_launch_stored_its_offer_leaves_the_offer_selling(
    shop: Shop,
) -> None:
    storing = HeldCalls(shop.offers_store)
    launching, _ = other_process(shop, offers_store=cast(OfferStore, storing))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=30))
    await asyncio.wait_for(storing.entered.wait(), 2)
    await shop.offers.set_product_stock(HOST, shop.product_id, STOCK + 10)  # more arrived
    storing.gate.set()
    offer, created = await launch
    assert created
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    assert len(shop.events.of_type("offer.started")) == 1


class FailingCounts:
    """The product store as a MongoDB that fails the launch's count (after its offer was
    stored)."""

    def __init__(self, shared: ProductStore) -> None:
        self._shared = shared

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)

    async def count_launch(self, product_id: str, *, at_least: int) -> bool:
        raise Unavailable("the database is unreachable, try again")


async def test_a_launch_whose_count_fails_withdraws_its_offer(shop: Shop) -> None:
    """Uncounted, the offer could meet a stock count that never saw its booking."""
    failing, _ = other_process(shop, products=cast(ProductStore, FailingCounts(shop.products)))
    with pytest.raises(Unavailable):
        await launch_through(failing, shop, quantity=30, key="blip")
    [withdrawn] = await shop.offers_store.of_product(shop.product_id)
    assert withdrawn.end_reason is not None
    assert await shop.offers_store.by_launch_key(shop.room_id, f"{HOST.user_id}:blip") is None
    assert shop.events.of_type("offer.started") == []


async def test_a_launch_sent_again_leaves_its_selling_offer_alone(shop: Shop) -> None:
    """The usual retry: the first answer was lost, the offer is counted and selling. A count
    made since (one that saw it) or a failing store must not take it back."""
    offer, _ = await launch_through(shop.offers, shop, quantity=30, key="lost")
    await shop.claim(offer, buyer(1), "k")
    await shop.offers.set_product_stock(HOST, shop.product_id, 40)  # covers its 30
    again, created = await launch_through(shop.offers, shop, quantity=30, key="lost")
    assert (again.id, created) == (offer.id, False)
    failing, _ = other_process(shop, products=cast(ProductStore, FailingCounts(shop.products)))
    with pytest.raises(Unavailable):
        await launch_through(failing, shop, quantity=30, key="lost")
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    same, created = await launch_through(shop.offers, shop, quantity=30, key="lost")
    assert (same.id, created) == (offer.id, False)  # still its offer: no second one


async def test_a_count_overtaken_by_a_launch_it_still_covers_is_stored(shop: Shop) -> None:
    counting_store = HeldCalls(shop.products, "set_stock")
    counting, _ = other_process(shop, products=cast(ProductStore, counting_store))
    count = asyncio.create_task(counting.set_product_stock(HOST, shop.product_id, 40))
    await asyncio.wait_for(counting_store.entered.wait(), 2)  # read no bookings
    await launch_through(shop.offers, shop, quantity=30)
    counting_store.gate.set()
    assert (await count).stock == 40  # read again: 30 booked, 40 covers them


async def test_a_launch_that_loses_its_place_checks_the_stock_again(shop: Shop) -> None:
    """Another launch took its place, and a restock came meanwhile: the second look counts the
    new stock, not the one the launch first read."""
    storing = HeldCalls(shop.offers_store)
    launching, _ = other_process(shop, offers_store=cast(OfferStore, storing))
    launch = asyncio.create_task(launch_through(launching, shop, quantity=40))  # of 50
    await asyncio.wait_for(storing.entered.wait(), 2)
    await launch_through(shop.offers, shop, quantity=20)  # takes the place
    await shop.offers.set_product_stock(HOST, shop.product_id, 100)
    storing.gate.set()
    offer, created = await launch  # 20 + 40 of 100, where the old 50 would refuse it
    assert created
    assert offer.quantity == 40


async def test_the_cancel_of_a_late_order_never_rebuilds_a_settled_offers_stock(
    shop: Shop,
) -> None:
    """Two claims reserved before the end; their orders land after the offer settled, Redis
    having lost its stock. Each is cancelled: the first's cancel, giving its units back, must
    not rebuild the settled offer's stock, which would count the second as held (finding 217)."""
    slow1 = HeldCalls(shop.orders_store)
    _, p1 = other_process(shop, orders=cast(OrderStore, slow1))
    slow2 = HeldCalls(shop.orders_store)
    attach2 = HeldCalls(shop.stock, "attach_order")
    _, p2 = other_process(shop, orders=cast(OrderStore, slow2), stock=cast(Any, attach2))
    first = await shop.launch(quantity=STOCK, limit=1)
    c1 = asyncio.ensure_future(
        p1.claim(first.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await slow1.entered.wait()
    c2 = asyncio.ensure_future(
        p2.claim(first.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await slow2.entered.wait()
    await shop.offers.stop(first.id, HOST)
    shop.stock.flush()
    await settle(shop)
    await shop.launch(quantity=STOCK, limit=1)  # the whole stock, booked again
    shop.stock.flush()  # lost again
    slow2.gate.set()
    await attach2.entered.wait()  # the second order is written, its attach on its way
    slow1.gate.set()
    with pytest.raises(Conflict):
        await c1
    attach2.gate.set()
    with pytest.raises(Conflict) as refused:
        await c2
    assert refused.value.code == "claim_expired"
    assert {o.status for o in await shop.orders_store.of_offer(first.id)} == {OrderStatus.CANCELLED}
