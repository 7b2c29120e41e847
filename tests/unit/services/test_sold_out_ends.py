"""Who ends an offer that sells out: the claim that took the last unit, once, when every
reservation has its order; housekeeping otherwise (a seller that died, a claimer that died with
units reserved, which the reaper gives back to sell)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from server.domain.offers import EndReason
from server.ports import OrderStore
from server.services import stock_announcer
from server.services.housekeeping import Housekeeper
from tests.unit.services.shop import (
    ADDRESS,
    HeldCalls,
    Shop,
    buyer,
    other_process,
    second_process,
    settle,
)


async def test_a_sell_out_on_two_processes_at_once_is_announced_once(shop: Shop) -> None:
    other = second_process(shop)
    offer = await shop.launch(quantity=6, limit=1)
    claims = [
        (shop.orders if n % 2 else other).claim(
            offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS
        )
        for n in range(8)
    ]
    results = await asyncio.gather(*claims, return_exceptions=True)
    assert sum(not isinstance(result, BaseException) for result in results) == 6
    await settle()
    kinds = [
        (e["type"], e.get("remaining")) for e in shop.events.of_type("offer.stock", "offer.ended")
    ]
    assert kinds.count(("offer.stock", 0)) == 1
    assert kinds[-2:] == [("offer.stock", 0), ("offer.ended", 0)]
    figures: list[int] = [e["remaining"] for e in shop.events.of_type("offer.stock")]
    assert figures == sorted(figures, reverse=True)


async def test_housekeeping_ends_an_offer_whose_seller_never_did(shop: Shop) -> None:
    seller_offers, seller = other_process(shop)
    await seller_offers.close()  # the seller shuts down as its claims complete: no end from it
    offer = await shop.launch(quantity=2, limit=1)
    for n in range(2):
        await seller.claim(offer.id, buyer(n), quantity=1, idempotency_key="k", address=ADDRESS)
    keeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    await keeper.run_once()
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    told = shop.events.of_type("offer.stock", "offer.ended")
    assert [(e["type"], e.get("remaining")) for e in told] == [
        ("offer.stock", 0),
        ("offer.ended", 0),
    ]


async def test_housekeeping_leaves_an_offer_whose_last_unit_has_no_order_yet(shop: Shop) -> None:
    offer = await shop.launch(quantity=1, limit=1)
    # Reserved by a claimer that died before writing the order: the unit may come back.
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())
    keeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is None
    shop.clock.advance(seconds=31)  # the orphan's grace is over: the reaper gives it back
    await keeper.run_once()
    assert await shop.stock.remaining(offer.id) == 1
    _order, created = await shop.claim(offer, buyer(1), "k")
    assert created


async def test_claims_selling_out_around_a_dead_claimers_unit_leave_the_offer_running(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stock_announcer, "LAST_ORDERS_WAIT_SECONDS", 0.1)  # not 2 s: none comes
    offer = await shop.launch(quantity=3, limit=1)
    # Reserved by a claimer that died before writing the order: the unit may come back.
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())
    for n in range(2):  # the last two units, the last one alone
        await shop.claim(offer, buyer(n), f"k{n}")
    await settle()
    assert (await shop.offers_store.get(offer.id)).end_reason is None  # not sold out for good
    told = shop.events.of_type("offer.stock", "offer.ended")
    assert [(e["type"], e["remaining"]) for e in told] == [("offer.stock", 1), ("offer.stock", 0)]
    keeper = Housekeeper(shop.offers, shop.orders, lambda: [offer.id])
    await keeper.run_once()
    await keeper.run_once()
    assert (await shop.offers_store.get(offer.id)).end_reason is None  # the unit is still out
    shop.clock.advance(seconds=31)  # the orphan's grace is over: the reaper gives it back
    await keeper.run_once()
    await settle()
    assert shop.events.of_type("offer.stock")[-1]["remaining"] == 1  # the room hears it back
    await shop.claim(offer, buyer(3), "k3")  # and sells it
    await settle()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT


async def test_the_last_unit_ends_the_offer_once_the_orders_being_written_land(
    shop: Shop,
) -> None:
    # Another process's claim is still writing its order when this one takes the last unit,
    # as in most bursts on several processes: the end waits for it, not for housekeeping.
    writes = HeldCalls(shop.orders_store)  # its writes wait for the test
    _, busy = other_process(shop, orders=cast(OrderStore, writes))
    offer = await shop.launch(quantity=2, limit=1)
    writing = asyncio.create_task(
        busy.claim(offer.id, buyer(1), quantity=1, idempotency_key="k", address=ADDRESS)
    )
    await asyncio.sleep(0.05)  # its unit reserved, its order on its way
    await shop.claim(offer, buyer(2), "k")  # the last unit
    await asyncio.sleep(0.2)
    writes.gate.set()
    await writing
    await settle()
    assert (await shop.offers_store.get(offer.id)).end_reason is EndReason.SOLD_OUT
    told = shop.events.of_type("offer.stock", "offer.ended")
    assert [(e["type"], e.get("remaining")) for e in told][-2:] == [
        ("offer.stock", 0),
        ("offer.ended", 0),
    ]
    assert [e.get("remaining") for e in told if e["type"] == "offer.stock"].count(0) == 1
