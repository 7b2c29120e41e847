"""What housekeeping did, and which of its steps failed, as Prometheus counts: an operator's
view of expiries, released orphans and a backend that is away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from server.domain.errors import Unavailable
from server.domain.orders import OrderStatus
from server.metrics import Metrics
from server.services.housekeeping import Housekeeper
from tests.unit.services.flaky import flaky
from tests.unit.services.shop import Shop, buyer


def counts(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        sample.labels["step"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == f"{name}_total"
    }


async def test_housekeeping_counts_what_it_did(shop: Shop) -> None:
    offer = await shop.launch(quantity=4)
    await shop.claim(offer, buyer(1), "k1")
    await shop.claim(offer, buyer(2), "k1")
    await shop.stock.claim(offer.id, "buyer-9", 1, "buyer-9:k", shop.clock())  # claimer died
    metrics = Metrics()
    keeper = Housekeeper(
        shop.offers, shop.orders, shop.orders.recently_claimed_offers, metrics=metrics
    )
    shop.clock.advance(seconds=61)  # past the offer's end and the orphan grace
    await keeper.run_once()
    shop.clock.advance(minutes=15)
    await keeper.run_once()
    done = counts(metrics.registry, "liveshop_housekeeping_done")
    assert done["end_due_offers"] == 1
    assert done["reap_orphans"] == 1
    assert done["expire_due_orders"] == 2
    assert counts(metrics.registry, "liveshop_housekeeping_failures") == {}


async def test_housekeeping_counts_the_steps_that_failed(shop: Shop) -> None:
    offer = await shop.launch(quantity=4)
    await shop.claim(offer, buyer(1), "k1")
    stock, offers, orders = flaky(shop)
    metrics = Metrics()
    keeper = Housekeeper(offers, orders, lambda: [offer.id], metrics=metrics)
    stock.away = True  # Redis away: the offer's stock cannot be stopped, nor units returned
    shop.clock.advance(minutes=16)
    await keeper.run_once()
    assert counts(metrics.registry, "liveshop_housekeeping_failures") == {"end_due_offers": 1}
    # The order expired all the same; its units wait to go back.
    assert counts(metrics.registry, "liveshop_housekeeping_done") == {"expire_due_orders": 1}
    stock.away = False
    await keeper.run_once()
    done = counts(metrics.registry, "liveshop_housekeeping_done")
    # The end that failed here is finished by its next round.
    assert done == {"expire_due_orders": 1, "return_units": 1, "finish_ends": 1}
    assert counts(metrics.registry, "liveshop_housekeeping_failures") == {"end_due_offers": 1}


async def test_a_round_that_fails_outside_its_steps_does_not_end_housekeeping(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    offer = await shop.launch(quantity=4)
    rounds = 0

    def served_offer_ids() -> list[str]:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise KeyError("a bug in the first round")
        return []

    keeper = Housekeeper(shop.offers, shop.orders, served_offer_ids, interval=0.01)
    shop.clock.advance(seconds=61)  # past the offer's end
    keeper.start()
    try:
        for _ in range(200):  # a round each 10 ms
            if rounds >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        await keeper.stop()
    assert rounds >= 3
    assert (await shop.offers_store.get(offer.id)).ended_at is not None  # ended in a later round
    failed = [r for r in caplog.records if r.getMessage() == "housekeeping_round_failed"]
    assert len(failed) == 1
    assert failed[0].exc_info is not None


async def test_each_round_checks_the_stocks_redis_and_counts_a_redis_away(shop: Shop) -> None:
    """The checks decide themselves whether they are due (RedisChecks); housekeeping gives
    them each round, and counts a round that could not ask Redis as any step's."""
    asked = 0

    async def check_redis() -> None:
        nonlocal asked
        asked += 1
        if asked == 2:
            raise Unavailable("live data is unreachable, try again")

    metrics = Metrics()
    keeper = Housekeeper(
        shop.offers, shop.orders, lambda: [], metrics=metrics, check_redis=check_redis
    )
    for round_number in (1, 2, 3):
        await keeper.run_once()
        await until_asked(lambda: asked, round_number)  # beside the round, in a task
    assert counts(metrics.registry, "liveshop_housekeeping_failures") == {"check_redis": 1}


async def until_asked(asked: Callable[[], int], times: int) -> None:
    for _ in range(100):
        if asked() == times:
            return
        await asyncio.sleep(0)
    raise AssertionError("never asked")


async def test_no_round_waits_for_a_redis_check_that_hangs(shop: Shop) -> None:
    """Awaited by its round, a check held by a Redis that hangs held the next round for its
    whole deadline (5 s): expiries and ends every 6 s, not every second."""
    offer = await shop.launch(quantity=2)
    await shop.claim(offer, buyer(1), "k1")
    asked = 0
    never = asyncio.Event()

    async def hanging_check() -> None:
        nonlocal asked
        asked += 1
        await never.wait()

    keeper = Housekeeper(shop.offers, shop.orders, lambda: [], check_redis=hanging_check)
    try:
        # Not a measure: a round that waited for the check would wait for good.
        await asyncio.wait_for(keeper.run_once(), timeout=10)
        shop.clock.advance(minutes=16)  # the order is due to expire
        await asyncio.wait_for(keeper.run_once(), timeout=10)
        (order,) = await shop.orders_store.of_offer(offer.id)
        assert order.status is OrderStatus.EXPIRED
        assert asked == 1  # one check at a time
    finally:
        await keeper.stop()  # the one hanging too
