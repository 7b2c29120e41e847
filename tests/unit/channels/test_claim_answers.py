"""A claim over a socket is answered on it: a new order by the buyer's private frame, which
skips a socket whose token has expired; so a claim taken while the token held, whose order is
written after it expired, is answered by the endpoint itself."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

from channels import endpoint
from channels.hub import Hub
from channels.protocol import Claim
from schemas.commerce import order_to_wire
from schemas.ws import OfferClaim
from server.container import Container
from server.domain.orders import Order
from tests.contract.order_samples import sample_order
from tests.unit.channels.hub_fakes import Socket, viewer

FRAME = OfferClaim.model_validate(
    {
        "type": "offer.claim",
        "offer_id": "f_1",
        "idempotency_key": "k_1",
        "quantity": 2,
        "shipping_address": {
            "name": "Ana",
            "line1": "Rua 1",
            "city": "Lisboa",
            "postal_code": "1000-001",
            "country": "PT",
        },
    }
)


def shop_creating(hub: Hub, order: Order) -> Container:
    """An order service whose claims make `order`, telling its buyer as the real one does."""

    async def claim(*args: Any, **kwargs: Any) -> tuple[Order, bool]:
        frame = {"type": "order.updated", "order": order_to_wire(order)}
        await hub.send_private(order.buyer_id, frame)
        return order, True

    return cast(Container, SimpleNamespace(order_service=SimpleNamespace(claim=claim)))


async def test_a_claim_whose_token_expired_before_its_order_was_written_is_answered(
    hub: Hub,
) -> None:
    order = sample_order(buyer="user-1")
    for expires, kind in ((time.time() - 1, "lapsed"), (time.time() + 3600, "fresh")):
        socket = Socket()
        conn, room = await hub.join("r1", viewer(1), socket, token_expires=expires)
        container = shop_creating(hub, order)
        await endpoint._claim(Claim(FRAME), container, hub.metrics.ws_claims, conn, room)
        await socket.until_got("order.updated")
        await asyncio.sleep(0.05)
        assert len(socket.of_type("order.updated")) == 1, kind  # once, not twice
        await hub.leave(conn)
