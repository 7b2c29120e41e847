"""The order store's notes of buyers not yet told of a change (`order.updated`), on memory and a
real MongoDB replica set: noted in the same write as the move, found by housekeeping, cleared
once told of the order as it stands."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.adapters.memory_orders import MemoryOrderStore
from server.adapters.mongo.orders import MongoOrderStore
from server.domain.errors import Conflict
from server.domain.orders import OrderStatus
from server.ports import OrderStore
from tests.contract.order_samples import T0, TTL, move_order, sample_order

S = OrderStatus


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def orders(request: pytest.FixtureRequest) -> OrderStore:
    if request.param == "memory":
        return MemoryOrderStore()
    return MongoOrderStore(request.getfixturevalue("mongo_db"))


async def test_an_untold_buyer_is_noted_until_told_of_the_order_as_it_stands(
    orders: OrderStore,
) -> None:
    for n in range(2):
        await orders.create(sample_order(f"o_{n}", f"k_{n}"))
    await orders.note_buyer_untold("o_1")
    untold = await orders.buyers_untold(T0 + TTL, 10)
    assert untold == [await orders.get("o_1")]
    # One whose notice keeps failing is left out, so that it holds back nobody else's.
    assert await orders.buyers_untold(T0 + TTL, 10, skip={"o_1"}) == []
    assert await orders.buyers_untold(T0, 10) == []  # made at T0: not before it
    cancel = await move_order(orders, "o_1", S.CANCELLED)  # changed before it was told
    await orders.buyer_told("o_1", len(untold[0].history))  # of the change before
    after_cancel = cancel.history[-1].at + timedelta(seconds=1)
    assert [o.id for o in await orders.buyers_untold(after_cancel, 10)] == ["o_1"]
    await orders.buyer_told("o_1", 2)  # of the cancel
    await orders.buyer_told("o_1", 2)  # twice is fine
    assert await orders.buyers_untold(after_cancel, 10) == []
    assert (await orders.get("o_1")).status is S.CANCELLED  # the order is unchanged


async def test_a_move_notes_its_buyer_untold_in_the_same_write(orders: OrderStore) -> None:
    # A process may die between storing a move and telling the buyer: another must find it.
    for n in range(2):
        await orders.create(sample_order(f"o_{n}", f"k_{n}"))
    paid = await move_order(orders, "o_0", S.PAID)
    moved_at = paid.history[-1].at
    assert await orders.buyers_untold(moved_at, 10) == []  # not before the move
    assert await orders.buyers_untold(moved_at + timedelta(seconds=1), 10) == [paid]
    stale = await orders.get("o_1")
    await move_order(orders, "o_1", S.CANCELLED)
    await orders.buyer_told("o_1", 2)
    stale.move(S.EXPIRED, at=moved_at, by="system")
    with pytest.raises(Conflict):  # a move refused notes nothing
        await orders.save_move(stale, expected=S.PENDING_PAYMENT)
    assert await orders.buyers_untold(moved_at + timedelta(days=1), 10) == [paid]
