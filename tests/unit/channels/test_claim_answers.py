"""A claim over a socket is answered on it, once: a new order by the buyer's private frame,
which skips a socket whose token has expired but for the orders it claimed itself, taken while
the token held, whenever they are told."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from channels import endpoint
from channels.connection import CLAIMS_HEARD
from channels.hub import Hub
from channels.protocol import Claim
from schemas.commerce import order_to_wire
from schemas.ws import OfferClaim
from server.container import Container
from server.domain.identity import client_key
from server.domain.orders import Order
from tests.contract.order_samples import sample_offer, sample_order
from tests.unit.channels.hub_fakes import Socket, viewer

FRAME = OfferClaim.model_validate(
    {
        "type": "offer.claim",
        "offer_id": "of_1",  # sample_order's
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


def shop_with(
    hub: Hub, order: Order, *, tell_after: float = 0.0, answer_after: float = 0.0
) -> Container:
    """An order service whose claims make `order`, telling its buyer `tell_after` seconds in
    (the broker's way, or housekeeping's once the broker is back) and answering `answer_after`
    seconds in."""
    telling: set[asyncio.Task[None]] = set()

    async def tell() -> None:
        await asyncio.sleep(tell_after)
        await hub.send_private(
            order.buyer_id, {"type": "order.updated", "order": order_to_wire(order)}
        )

    async def claim(*args: Any, **kwargs: Any) -> tuple[Order, bool]:
        task = asyncio.create_task(tell())
        telling.add(task)
        task.add_done_callback(telling.discard)
        await asyncio.sleep(answer_after)
        return order, True

    return cast(Container, SimpleNamespace(order_service=SimpleNamespace(claim=claim)))


async def test_a_claim_whose_token_expired_before_its_order_was_written_is_answered(
    hub: Hub,
) -> None:
    order = sample_order(buyer="user-1")
    for expires, kind in ((time.time() - 1, "lapsed"), (time.time() + 3600, "fresh")):
        socket = Socket()
        conn, room = await hub.join("r1", viewer(1), socket, token_expires=expires)
        container = shop_with(hub, order)
        await endpoint._claim(Claim(FRAME), container, hub.metrics.ws_claims, conn, room)
        await socket.until_got("order.updated")
        await asyncio.sleep(0.05)
        assert len(socket.of_type("order.updated")) == 1, kind  # once, not twice
        await hub.leave(conn)


@pytest.mark.parametrize(
    ("tell_after", "answer_after"),
    [(0.0, 0.5), (0.5, 0.0)],
    ids=["told before the token expired, answered after", "told after, answered before"],
)
async def test_an_order_is_heard_once_on_its_socket_wherever_the_tokens_expiry_falls(
    hub: Hub, tell_after: float, answer_after: float
) -> None:
    order = sample_order(buyer="user-1")
    socket = Socket()
    conn, room = await hub.join("r1", viewer(1), socket, token_expires=time.time() + 0.3)
    container = shop_with(hub, order, tell_after=tell_after, answer_after=answer_after)
    await endpoint._claim(Claim(FRAME), container, hub.metrics.ws_claims, conn, room)
    await socket.until_got("order.updated")
    await asyncio.sleep(0.1)  # and nothing more
    assert len(socket.of_type("order.updated")) == 1


async def test_past_its_tokens_expiry_a_socket_hears_its_own_latest_claims_alone(
    hub: Hub,
) -> None:
    """Keys are the client's, one per offer: the same key on another offer (from another
    device) is not this socket's claim; and only its latest CLAIMS_HEARD are remembered."""
    socket = Socket()
    conn, _ = await hub.join("r1", viewer(1), socket, token_expires=time.time() - 1)
    other_offer = sample_order("o_2", "k5", buyer="user-1", offer=sample_offer("of_2", "r_2"))
    orders = [sample_order(f"o_k{n}", f"k{n}", buyer="user-1") for n in range(CLAIMS_HEARD + 1)]
    for order in orders:
        conn.note_claim(order.offer_id, client_key(order.buyer_id, order.idempotency_key))
    for order in [other_offer, *orders]:
        await hub.send_private("user-1", {"type": "order.updated", "order": order_to_wire(order)})
    await socket.until(lambda: len(socket.of_type("order.updated")) >= CLAIMS_HEARD)
    await asyncio.sleep(0.05)  # and nothing more
    heard = [frame["order"]["id"] for frame in socket.of_type("order.updated")]
    assert heard == [order.id for order in orders[1:]]  # not o_2, nor the first, forgotten
