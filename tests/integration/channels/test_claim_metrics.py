"""An operator's view of a flash sale on `/metrics`: claims by transport and outcome, and how
long they took, counted on a real server."""

from __future__ import annotations

import json

import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.channels.live import Live, recv, recv_type
from tests.integration.channels.test_flash_offers import ADDRESS, claim, launch


async def scrape(live: Live) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = await live.http.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name.startswith("liveshop_claim")
    }


def claims(transport: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "liveshop_claims_total", (("outcome", outcome), ("transport", transport))


def timed(transport: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return "liveshop_claim_seconds_count", (("transport", transport),)


async def test_claims_are_counted_by_transport_and_outcome(live: Live) -> None:
    offer = await launch(live, quantity=3, limit=1)
    assert (await claim(live, offer["id"], "leo", "k1")).status_code == 201
    assert (await claim(live, offer["id"], "leo", "k1")).status_code == 201  # its retry
    assert (await claim(live, offer["id"], "leo", "k2")).status_code == 409  # over the limit
    async with websockets.connect(live.url("mia")) as mia:
        await recv(mia)
        for key in ("k1", "k2"):  # a unit, then one over the limit
            frame = {
                "type": "offer.claim",
                "offer_id": offer["id"],
                "idempotency_key": key,
                "ref": key,
                "shipping_address": ADDRESS,
            }
            await mia.send(json.dumps(frame))
        await recv_type(mia, "order.updated")
        refused = await recv_type(mia, "error")
        assert (refused["code"], refused["ref"]) == ("limit_reached", "k2")
        faulty = {"type": "offer.claim", "offer_id": offer["id"], "idempotency_key": "k3"}
        await mia.send(json.dumps({**faulty, "quantity": 0, "shipping_address": ADDRESS}))
        assert (await recv_type(mia, "error"))["code"] == "invalid_quantity"
    assert (await claim(live, offer["id"], "noa", "k1")).status_code == 201  # the last unit
    assert (await claim(live, offer["id"], "ivy", "k1")).status_code == 409  # sold out
    seen = await scrape(live)
    assert seen[claims("http", "order")] == 2
    assert seen[claims("http", "replayed")] == 1
    assert seen[claims("http", "limit_reached")] == 1
    assert seen[claims("http", "sold_out")] == 1
    assert seen[claims("websocket", "order")] == 1
    assert seen[claims("websocket", "limit_reached")] == 1
    # Refused before reaching the service, as an HTTP claim's 422 is: still a claim.
    assert seen[claims("websocket", "invalid_quantity")] == 1
    assert (seen[timed("http")], seen[timed("websocket")]) == (5, 3)
