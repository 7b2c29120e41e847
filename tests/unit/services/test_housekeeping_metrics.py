"""What housekeeping did, and which of its steps failed, as Prometheus counts: an operator's
view of expiries, released orphans and a backend that is away."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

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
    assert done == {"expire_due_orders": 1, "return_units": 1}
    assert counts(metrics.registry, "liveshop_housekeeping_failures") == {"end_due_offers": 1}
