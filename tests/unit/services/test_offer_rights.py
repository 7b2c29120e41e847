"""Who may stop an offer, and which offers a room's socket may claim: refused without a trace
of change, each by what the README says."""

from __future__ import annotations

import pytest

from server.domain.errors import Forbidden, NotFound
from server.domain.identity import Identity, Role
from server.domain.offers import EndReason
from tests.unit.services.shop import ADDRESS, Shop, buyer


@pytest.mark.parametrize(
    "who",
    [
        Identity("shopper-1", Role.SHOPPER),
        Identity("host-2", Role.HOST),  # another room's host
        Identity("moderator-1", Role.MODERATOR),  # moderates chat, runs no sale
    ],
)
async def test_only_the_rooms_host_or_an_admin_stops_an_offer(shop: Shop, who: Identity) -> None:
    offer = await shop.launch(quantity=3, limit=1)
    with pytest.raises(Forbidden):
        await shop.offers.stop(offer.id, who)
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    assert shop.events.of_type("offer.ended") == []
    _, created = await shop.claim(offer, buyer(1), "k1")  # it still sells
    assert created
    stopped = await shop.offers.stop(offer.id, Identity("admin-1", Role.ADMIN))
    assert stopped.end_reason is EndReason.STOPPED


async def test_a_rooms_socket_claims_only_that_rooms_offers(shop: Shop) -> None:
    """Over a room's websocket, an offer of another room is not found there, as an unknown
    one, and nothing is reserved."""
    offer = await shop.launch(quantity=3, limit=1)
    with pytest.raises(NotFound):
        await shop.orders.claim(
            offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS,
            room_id="r_another_room",
        )  # fmt: skip
    assert await shop.stock.remaining(offer.id) == 3
    order, created = await shop.orders.claim(
        offer.id, buyer(1), quantity=1, idempotency_key="k1", address=ADDRESS, room_id=shop.room_id
    )
    assert created
    assert order.room_id == shop.room_id
