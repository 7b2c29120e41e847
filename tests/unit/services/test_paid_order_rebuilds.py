"""An offer's stock rebuilt after Redis lost it counts the units of every order that still holds
them: paid, and on through fulfilment to delivery, as well as pending payment. Forgotten, a paid
order's units would be sold again: an oversell."""

from __future__ import annotations

import pytest

from server.domain.errors import Conflict
from server.domain.orders import OrderStatus
from tests.unit.services.shop import Shop, buyer, move_in_store, pay, units_held

_S = OrderStatus


async def test_a_rebuild_counts_the_units_of_paid_and_delivered_orders(shop: Shop) -> None:
    offer = await shop.launch(quantity=5, limit=1)
    paid, _ = await shop.claim(offer, buyer(1), "k1")
    delivered, _ = await shop.claim(offer, buyer(2), "k2")
    await shop.claim(offer, buyer(3), "k3")  # pending payment
    await pay(shop, paid.id)
    await move_in_store(
        shop.orders_store,
        delivered.id,
        *(_S.PAID, _S.FULFILLING, _S.SHIPPED, _S.DELIVERED),
        at=shop.clock(),
    )
    shop.stock.flush()  # Redis lost the offer

    await shop.offers.rebuild(offer.id)

    assert await shop.stock.remaining(offer.id) == 2  # 5 less the three orders' units
    for n in (1, 2):  # their paid and delivered units still count against their limit
        with pytest.raises(Conflict) as refused:
            await shop.claim(offer, buyer(n), f"again-{n}")
        assert refused.value.code == "limit_reached"
    for n in (4, 5):
        await shop.claim(offer, buyer(n), f"k{n}")
    with pytest.raises(Conflict) as sold_out:
        await shop.claim(offer, buyer(6), "k6")
    assert sold_out.value.code == "sold_out"
    assert await units_held(shop, offer.id) == 5  # never more than the offer's quantity


async def test_a_rebuild_counts_no_units_for_a_refunded_order(shop: Shop) -> None:
    """The other side: a refund gave its units back, so the rebuilt stock has them."""
    offer = await shop.launch(quantity=2, limit=1)
    refunded, _ = await shop.claim(offer, buyer(1), "k1")
    await shop.claim(offer, buyer(2), "k2")
    await move_in_store(shop.orders_store, refunded.id, _S.PAID, _S.REFUNDED, at=shop.clock())
    shop.stock.flush()

    await shop.offers.rebuild(offer.id)

    assert await shop.stock.remaining(offer.id) == 1
