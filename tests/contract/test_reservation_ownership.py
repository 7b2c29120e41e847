"""Which reservation an order holds, on every reservation store: a key may hold a retry's
reservation, made afresh after Redis lost the first attempt's, and neither attempt may give
back, or take, units that are the other's."""

from __future__ import annotations

from server.domain.offers import AttachOutcome
from tests.contract.stock_backends import NOW, Backend, open_offer


async def test_a_release_for_one_reservation_leaves_another_under_the_same_key(
    backend: Backend,
) -> None:
    """A claim whose reservation Redis lost gives back only its own: the key may hold a
    retry's reservation by then, made afresh, whose order holds it."""
    stock = backend.stock
    await open_offer(stock, quantity=2, limit=1)
    mine = await stock.claim("of1", "alice", 1, "k1", NOW)
    assert not await stock.release("of1", "k1", reservation_id="rsv_someone_elses")
    assert await stock.remaining("of1") == 1
    assert await stock.release("of1", "k1", reservation_id=mine.reservation_id)
    assert await stock.remaining("of1") == 2


async def test_an_order_of_another_quantity_is_not_attached_to_a_reservation(
    backend: Backend,
) -> None:
    """Two units reserved under a key (a retry's, after Redis lost the first attempt's one)
    are not held by the first attempt's one-unit order."""
    stock = backend.stock
    await open_offer(stock, quantity=5, limit=5)
    await stock.claim("of1", "alice", 2, "k1", NOW)
    assert await stock.attach_order("of1", "k1", "ord1", quantity=1) is AttachOutcome.UNKNOWN
    assert await stock.attach_order("of1", "k1", "ord2", quantity=2) is AttachOutcome.ATTACHED
    assert await stock.attach_order("of1", "k1", "ord2", quantity=2) is AttachOutcome.ATTACHED
    assert await stock.attach_order("of1", "k1", "ord2") is AttachOutcome.ATTACHED
