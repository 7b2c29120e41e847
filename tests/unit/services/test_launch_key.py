"""A host's launch sent again with the same Idempotency-Key gets the offer the first one made,
books the product's stock once, and tells the room again (the first may have failed after
storing the offer); the same key with another offer's terms is refused."""

from __future__ import annotations

import asyncio

import pytest

from server.domain.errors import Conflict, Unavailable
from server.domain.identity import Identity, Role
from server.domain.offers import FlashOffer
from server.services.offers import OfferService
from tests.unit.services.shop import HOST, Shop, buyer, launch_through
from tests.unit.services.test_give_back import FlakyEvents
from tests.unit.services.test_product_stock import racing_processes


async def launch(
    service: OfferService, shop: Shop, key: str | None, quantity: int = 30, who: Identity = HOST
) -> tuple[FlashOffer, bool]:
    return await launch_through(service, shop, quantity=quantity, key=key, who=who)


async def test_a_launch_sent_again_gets_the_same_offer_and_books_once(shop: Shop) -> None:
    first, created = await launch(shop.offers, shop, "L1")
    again, created_again = await launch(shop.offers, shop, "L1")
    assert (created, created_again) == (True, False)
    assert again == first
    assert [o.id for o in await shop.offers_store.of_product(shop.product_id)] == [first.id]
    await launch(shop.offers, shop, "L2", quantity=20)  # the other 20 of the stock of 50
    started = [e["offer"]["id"] for e in shop.events.of_type("offer.started")]
    assert started.count(first.id) == 2  # told again


async def test_a_launch_sent_again_tells_the_room_the_stock_as_it_is_now(shop: Shop) -> None:
    first, _ = await launch(shop.offers, shop, "L1", quantity=5)
    await shop.claim(first, buyer(1), "k1")
    await launch(shop.offers, shop, "L1", quantity=5)
    told = [e["offer"]["remaining"] for e in shop.events.of_type("offer.started")]
    assert told == [5, 4]  # viewers take offer.started as the offer's state


async def test_the_same_key_with_other_terms_is_refused(shop: Shop) -> None:
    await launch(shop.offers, shop, "L1")
    with pytest.raises(Conflict) as refused:
        await launch(shop.offers, shop, "L1", quantity=10)
    assert refused.value.code == "idempotency_key_reused"
    assert len(await shop.offers_store.of_product(shop.product_id)) == 1


async def test_keys_are_the_launchers_own(shop: Shop) -> None:
    admin = Identity("admin-1", Role.ADMIN)
    mine, _ = await launch(shop.offers, shop, "L1", quantity=10)
    theirs, created = await launch(shop.offers, shop, "L1", quantity=10, who=admin)
    assert created
    assert theirs.id != mine.id


async def test_a_launch_whose_room_was_not_told_is_told_when_sent_again(shop: Shop) -> None:
    events = FlakyEvents()
    stores = (shop.offers_store, shop.orders_store, shop.rooms, shop.products, shop.stock)
    offers = OfferService(*stores, events, shop.clock)
    events.away = True
    with pytest.raises(Unavailable):  # stored and booked; the room heard nothing
        await launch(offers, shop, "L1")
    events.away = False
    offer, created = await launch(offers, shop, "L1")
    assert not created
    assert [e["offer"]["id"] for e in events.of_type("offer.started")] == [offer.id]


async def test_the_same_launch_sent_twice_at_once_makes_one_offer(shop: Shop) -> None:
    services = racing_processes(shop)
    # 30 each of a stock of 50: were they two launches, the second would not fit.
    results = await asyncio.gather(*(launch(service, shop, "L1") for service in services))
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0] == results[1][0]
    assert len(await shop.offers_store.of_product(shop.product_id)) == 1
