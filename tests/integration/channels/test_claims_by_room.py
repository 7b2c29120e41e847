"""A room's socket claims that room's offers: another room's, live as it may be, is not found
there, as an unknown one is, and takes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import websockets

from tests.integration.channels.live import Live, recv, recv_type
from tests.integration.channels.test_flash_offers import ADDRESS, launch


async def test_a_rooms_socket_cannot_claim_another_rooms_offer(live: Live) -> None:
    elsewhere = await live.host("POST", "/rooms", {"title": "Another show"})
    other_room = elsewhere.json()["id"]
    assert (await live.host("POST", f"/rooms/{other_room}/start")).status_code == 200
    offer = await launch(live, quantity=3, limit=1)
    other = await launch(replace(live, room_id=other_room), quantity=3, limit=1)
    async with websockets.connect(live.url("leo")) as ws:
        await recv(ws)  # hello
        for offer_id, ref in ((other["id"], "theirs"), ("f_unknown", "unknown")):
            claim = {
                "type": "offer.claim",
                "offer_id": offer_id,
                "quantity": 1,
                "idempotency_key": f"k-{ref}",
                "shipping_address": ADDRESS,
                "ref": ref,
            }
            await ws.send(json.dumps(claim))
            refused = await recv_type(ws, "error")
            assert (refused["code"], refused["ref"]) == ("not_found", ref)
        assert (await live.host("GET", f"/offers/{other['id']}")).json()["remaining"] == 3
        # This room's own offer is claimed over the same socket.
        await ws.send(json.dumps({**claim, "offer_id": offer["id"], "ref": "ours"}))
        updated = await recv_type(ws, "order.updated")
        assert updated["order"]["offer_id"] == offer["id"]
