"""A claim over the websocket refused because its offer is not running says so with the
documented code, `offer_not_active` (never `sold_out`), and the `ref` of the claim it answers:
an offer the host stopped, and one whose countdown has not run out (with when it starts)."""

from __future__ import annotations

import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.integration.channels.live import Live, recv, recv_type
from tests.integration.channels.test_flash_offers import ADDRESS, launch


async def refusal(ws: ClientConnection, offer_id: str, key: str, **extra: Any) -> dict[str, Any]:
    """The error frame answering a claim of one unit of the offer, under `key`."""
    claim = {
        "type": "offer.claim",
        "offer_id": offer_id,
        "quantity": 1,
        "idempotency_key": key,
        "shipping_address": ADDRESS,
        **extra,
    }
    await ws.send(json.dumps(claim))
    return await recv_type(ws, "error")


async def test_a_claim_of_a_stopped_offer_over_the_socket_is_offer_not_active(
    live: Live,
) -> None:
    offer = await launch(live, quantity=3, limit=1, duration_seconds=3600)
    stopped = await live.host("POST", f"/offers/{offer['id']}/stop")
    assert stopped.json()["end_reason"] == "stopped"
    async with websockets.connect(live.url("leo")) as leo:
        await recv(leo)
        refused = await refusal(leo, offer["id"], "ws-late")
        assert (refused["code"], refused["ref"]) == ("offer_not_active", "ws-late")
        mine = await refusal(leo, offer["id"], "ws-later", ref="mine")
        assert (mine["code"], mine["ref"]) == ("offer_not_active", "mine")
    # Units were left: the refusal was not a sold-out one.
    assert (await live.http.get(f"/api/v1/offers/{offer['id']}")).json()["remaining"] == 3


async def test_a_claim_before_the_countdown_ends_over_the_socket_is_offer_not_active(
    live: Live,
) -> None:
    offer = await launch(live, quantity=3, limit=1, countdown_seconds=600)
    async with websockets.connect(live.url("leo")) as leo:
        await recv(leo)
        refused = await refusal(leo, offer["id"], "ws-early")
        assert (refused["code"], refused["ref"]) == ("offer_not_active", "ws-early")
        assert refused["starts_at"] == offer["starts_at"]  # when to claim, for the countdown
        mine = await refusal(leo, offer["id"], "ws-early-2", ref="mine")
        assert (mine["code"], mine["ref"]) == ("offer_not_active", "mine")
