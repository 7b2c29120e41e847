"""The host's figures of a room, through the service, on the memory adapters."""

from __future__ import annotations

from server.domain.figures import OfferFigures
from server.services.offer_reads import ROOM_OFFERS_LIMIT
from tests.unit.services.shop import HOST, Shop, buyer


async def test_a_rooms_totals_count_the_offers_beyond_those_it_lists(shop: Shop) -> None:
    """A room that ran more offers than its figures list each left its first ones' orders out
    of its totals, which then disagreed with its orders."""
    first = await shop.launch(quantity=1, limit=1)
    await shop.claim(first, buyer(1), "k-first")
    await shop.offers.stop(first.id, HOST)
    for _ in range(ROOM_OFFERS_LIMIT):
        shop.clock.advance(seconds=1)
        await shop.offers.stop((await shop.launch(quantity=1, limit=1)).id, HOST)

    figures = await shop.offers.figures_in_room(shop.room_id)

    assert len(figures.offers) == ROOM_OFFERS_LIMIT
    assert first.id not in {f.offer_id for f in figures.offers}
    assert figures.every_offer == [
        OfferFigures(first.id, orders=1, units=1, placed=1, held_units=1)
    ]


async def test_the_listed_offers_without_orders_show_zeros(shop: Shop) -> None:
    older = await shop.launch(quantity=2, limit=1)
    await shop.claim(older, buyer(1), "k")
    shop.clock.advance(seconds=1)
    newer = await shop.launch(quantity=2, limit=1)
    figures = await shop.offers.figures_in_room(shop.room_id)
    assert figures.offers == [
        OfferFigures(older.id, orders=1, units=1, placed=1, held_units=1),
        OfferFigures(newer.id),
    ]
    assert [f.offer_id for f in figures.every_offer] == [older.id]
