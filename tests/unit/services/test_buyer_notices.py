"""`order.updated` that finds no broker: noted on the order, and told by housekeeping once the
broker is back."""

from __future__ import annotations

from typing import Any

from server.domain.errors import Unavailable
from tests.unit.services.shop import Shop, buyer, other_process


async def test_a_change_the_buyer_could_not_hear_of_is_told_once_the_broker_is_back(
    shop: Shop,
) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    order, _ = await shop.claim(offer, buyer(1), "k1")
    broker_away = True

    async def notify(user_id: str, event: dict[str, Any]) -> None:
        if broker_away:
            raise Unavailable("live events are unavailable, try again")
        await shop.events.send_private(user_id, event)

    _, orders = other_process(shop, notify=notify)
    told_before = len(shop.events.private)
    await orders.cancel(order.id, buyer(1))  # the cancel stands; its order.updated cannot go
    assert await orders.tell_untold_buyers() == 0  # still away
    broker_away = False
    assert await orders.tell_untold_buyers() == 1
    assert await orders.tell_untold_buyers() == 0  # told once
    told = shop.events.private[told_before:]
    assert [(user, e["order"]["status"]) for user, e in told] == [("buyer-1", "cancelled")]
