"""Units of a cancelled or expired order go back to the offer even when the reservation store
is away at that moment, or the process dies between the order's move and the give-back: the
order notes it in the same write, and housekeeping finishes the job. A stop that could not stop
the stock is finished by the host's retry."""

from __future__ import annotations

import pytest

from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.errors import Conflict, Unavailable
from server.domain.offers import EndReason
from server.domain.orders import OrderStatus
from tests.unit.services.shop import ADDRESS, HOST, Shop, buyer, other_process


class FlakyStock(MemoryStockReservations):
    """The shop's own reservations, seen through a connection that can be cut."""

    def __init__(self, shared: MemoryStockReservations) -> None:
        self.__dict__ = shared.__dict__  # the same offers, reservations and stock
        self.away = False

    async def release(
        self, offer_id: str, idempotency_key: str, *, orphan_only: bool = False
    ) -> bool:
        self._check()
        return await super().release(offer_id, idempotency_key, orphan_only=orphan_only)

    async def stop(self, offer_id: str) -> bool:
        self._check()
        return await super().stop(offer_id)

    def _check(self) -> None:
        if self.away:
            raise Unavailable("live data is unreachable, try again")


async def test_a_cancel_while_the_stock_is_away_gives_the_units_back_later(shop: Shop) -> None:
    stock = FlakyStock(shop.stock)
    _, orders = other_process(shop, stock=stock)
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS
    )
    stock.away = True
    cancelled = await orders.cancel(order.id, buyer(1))
    assert cancelled.status is OrderStatus.CANCELLED  # the buyer's cancel stands
    assert await shop.stock.remaining(offer.id) == 2  # the unit is still held...
    assert await orders.return_units_due() == 0  # ...while the store stays away
    stock.away = False
    assert await shop.orders.return_units_due() == 1  # any process finishes it
    assert await shop.stock.remaining(offer.id) == 3
    assert await shop.orders.return_units_due() == 0  # once
    assert await shop.stock.remaining(offer.id) == 3


async def test_an_expiry_whose_give_back_never_ran_is_finished_by_housekeeping(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k")
    shop.clock.advance(minutes=16)
    # A process that dies between the two writes: the order moved, noting its units are due.
    order.move(OrderStatus.EXPIRED, at=shop.clock(), by="system", reason="not paid in time")
    await shop.orders_store.save_move(
        order, expected=OrderStatus.PENDING_PAYMENT, units_to_return=True
    )
    assert await shop.stock.remaining(offer.id) == 2
    assert await shop.orders.expire_due() == 0  # expired already: not expired again
    assert await shop.orders.return_units_due() == 1
    assert await shop.stock.remaining(offer.id) == 3
    [stored] = await shop.orders_store.list_for_buyer("buyer-1", 10)
    assert stored.status is OrderStatus.EXPIRED


async def test_a_stop_whose_stock_stop_failed_is_finished_by_the_retry(shop: Shop) -> None:
    stock = FlakyStock(shop.stock)
    offers, orders = other_process(shop, stock=stock)
    offer = await shop.launch(quantity=5, limit=1)
    stock.away = True
    with pytest.raises(Unavailable):  # the end is recorded, the stock not stopped
        await offers.stop(offer.id, HOST)
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.STOPPED
    stock.away = False
    stopped = await offers.stop(offer.id, HOST)  # the host tries again
    assert stopped.end_reason is EndReason.STOPPED
    with pytest.raises(Conflict) as refused:  # claims do not go on until the offer's end time
        await orders.claim(offer.id, buyer(2), quantity=1, idempotency_key="k", address=ADDRESS)
    assert refused.value.code == "offer_not_active"
