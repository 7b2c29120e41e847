"""A claim sent again with other terms (another address) while its first attempt's order is
on its way, in another process: whichever order is written first keeps the units reserved
under the key, and the other attempt is refused `idempotency_key_reused` having taken nothing."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from server.domain.errors import Conflict
from server.domain.offers import FlashOffer
from server.domain.orders import Address, Order, OrderStatus
from server.ports import OrderStore
from server.stock_port import StockReservations
from tests.unit.services.shop import ADDRESS, HeldCalls, Shop, buyer, other_process

ELSEWHERE = Address.clean(
    name="Ana", line1="Rua 2", city="Porto", postal_code="4000-001", country="PT"
)


@pytest.mark.parametrize("retry_attached_first", [True, False])
async def test_a_first_attempt_beaten_by_its_retry_with_other_terms_leaves_the_retrys_units(
    shop: Shop, retry_attached_first: bool
) -> None:
    """The same key from two processes, the second time with another address, while the first
    attempt's order is still on its way: the retry writes its order on the first attempt's
    reservation. The first attempt, finding that order under the key, took it for one an
    earlier reservation made and gave the reservation's units back: sold again while the
    retry's order held them, and its buyer over the limit."""
    offer = await shop.launch(quantity=2, limit=1)
    first, first_writes = await first_attempt_held_at_its_write(shop, offer)
    attaches = HeldCalls(shop.stock, "attach_order", answer_late=retry_attached_first)
    _, retry_process = other_process(shop, stock=cast(StockReservations, attaches))
    retry = asyncio.create_task(
        retry_process.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ELSEWHERE)
    )
    await attaches.entered.wait()  # its order written; attached too, if retry_attached_first
    first_writes.gate.set()
    with pytest.raises(Conflict) as refused:
        await first
    assert refused.value.code == "idempotency_key_reused"
    attaches.gate.set()
    order, created = await retry
    assert (created, order.status, order.shipping_address) == (
        True,
        OrderStatus.PENDING_PAYMENT,
        ELSEWHERE,
    )
    await assert_one_unit_held_by_the_buyer(shop, offer)


async def test_a_first_attempt_whose_reservation_redis_lost_leaves_its_retrys_units(
    shop: Shop,
) -> None:
    """As above, but Redis lost the offer while the first attempt's order was on its way: the
    retry reserved afresh under the key, and the first attempt's release, by key, gave back the
    retry's reservation instead of its own, which was gone."""
    offer = await shop.launch(quantity=2, limit=1)
    first, first_writes = await first_attempt_held_at_its_write(shop, offer)
    shop.stock.flush()  # Redis restarts without its data
    retry, created = await shop.orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ELSEWHERE
    )  # the offer rebuilt, the key reserved afresh, its order written and attached
    assert created
    first_writes.gate.set()
    with pytest.raises(Conflict) as refused:
        await first
    assert refused.value.code == "idempotency_key_reused"
    assert (await shop.orders_store.get(retry.id)).status is OrderStatus.PENDING_PAYMENT
    await assert_one_unit_held_by_the_buyer(shop, offer)


async def first_attempt_held_at_its_write(
    shop: Shop, offer: FlashOffer
) -> tuple[asyncio.Task[tuple[Order, bool]], HeldCalls]:
    """Buyer 1's claim with key "k" in another process: reserved, its order on its way until
    the returned gate is set."""
    writes = HeldCalls(shop.orders_store)
    _, process = other_process(shop, orders=cast(OrderStore, writes))
    first = asyncio.create_task(
        process.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await writes.entered.wait()
    return first, writes


async def assert_one_unit_held_by_the_buyer(shop: Shop, offer: FlashOffer) -> None:
    """One of the offer's two units held, by buyer 1, whose limit of one it reaches."""
    assert await shop.stock.remaining(offer.id) == 1
    with pytest.raises(Conflict) as limit:
        await shop.claim(offer, buyer(1), "k2")
    assert limit.value.code == "limit_reached"


@pytest.mark.parametrize("quantity", [1, 2])
async def test_a_first_attempt_written_first_onto_its_retrys_fresh_reservation_keeps_it(
    shop: Shop, quantity: int
) -> None:
    """The mirror of the above: the first attempt's order is written first, and attached to
    the key, which holds the retry's fresh reservation by then. The retry, finding that order,
    gave back what it took for its own units, which the order now held; and an order of
    another quantity than the reservation's was attached to it all the same."""
    offer = await shop.launch(quantity=3, limit=2)
    first, first_writes = await first_attempt_held_at_its_write(shop, offer)
    shop.stock.flush()  # Redis restarts without its data
    retry_writes = HeldCalls(shop.orders_store)
    _, retry_process = other_process(shop, orders=cast(OrderStore, retry_writes))
    retry = asyncio.create_task(
        retry_process.claim(
            offer.id, buyer(1), quantity=quantity, idempotency_key="k", address=ELSEWHERE
        )
    )
    await retry_writes.entered.wait()  # the offer rebuilt, the key reserved afresh
    first_writes.gate.set()
    if quantity == 1:  # its units, of its order's size: the order keeps them
        order, created = await first
        assert (created, order.status) == (True, OrderStatus.PENDING_PAYMENT)
    else:  # two units reserved for a one-unit order: not its
        with pytest.raises(Conflict) as expired:
            await first
        assert expired.value.code == "claim_expired"
    retry_writes.gate.set()
    with pytest.raises(Conflict) as refused:
        await retry
    assert refused.value.code == "idempotency_key_reused"
    held = [o for o in await shop.orders_store.of_offer(offer.id) if o.holds_stock]
    assert await shop.stock.remaining(offer.id) == 3 - sum(o.quantity for o in held)
