"""The order store's lists, run against memory and a real MongoDB replica set: a buyer's orders
and a room's, newest first, in pages after a key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.domain.orders import OrderStatus
from server.domain.pages import PageKey
from tests.contract.order_samples import (
    T0,
    Stores,
    sample_offer,
    sample_order,
)

S = OrderStatus


async def test_lists_are_scoped_and_newest_first(order_stores: Stores) -> None:
    room_2 = sample_offer("of_2", room_id="r_2")
    for i, (buyer, offer) in enumerate(
        [("u_1", None), ("u_2", None), ("u_1", room_2), ("u_1", None), ("u_2", room_2)]
    ):
        await order_stores.orders.create(
            sample_order(f"o_{i}", f"k_{i}", buyer=buyer, offer=offer, seconds=i)
        )

    assert [o.id for o in await order_stores.orders.list_for_buyer("u_1", 10)] == [
        "o_3",
        "o_2",
        "o_0",
    ]
    assert [o.id for o in await order_stores.orders.list_for_buyer("u_1", 2)] == ["o_3", "o_2"]
    assert [o.id for o in await order_stores.orders.list_for_room("r_2", 10)] == ["o_4", "o_2"]
    assert [o.id for o in await order_stores.orders.list_for_room("r_1", 10)] == [
        "o_3",
        "o_1",
        "o_0",
    ]
    assert await order_stores.orders.list_for_buyer("u_nobody", 10) == []


async def _pages(order_stores: Stores, scope: str, limit: int) -> list[list[str]]:
    """Every page of a list (buyer `u_1`, or room `r_1`), each read after the last one's key."""
    read = (
        order_stores.orders.list_for_buyer
        if scope == "buyer"
        else order_stores.orders.list_for_room
    )
    whose = "u_1" if scope == "buyer" else "r_1"
    pages: list[list[str]] = []
    after: PageKey | None = None
    while page := await read(whose, limit, after=after):
        pages.append([o.id for o in page])
        after = PageKey.of(page[-1])
        assert len(pages) < 50, "the pages never end"
    return pages


@pytest.mark.parametrize("scope", ["buyer", "room"])
@pytest.mark.parametrize("limit", [1, 2, 3, 9])
async def test_lists_page_after_a_key_ties_broken_by_id(
    order_stores: Stores, scope: str, limit: int
) -> None:
    # Ids in no particular order against their times, several to a millisecond.
    for order_id, seconds in [
        ("o_e", 0), ("o_a", 1), ("o_c", 1), ("o_b", 1), ("o_g", 2), ("o_d", 3), ("o_f", 3),
        ("o_h", 3), ("o_0", 3),
    ]:  # fmt: skip
        await order_stores.orders.create(sample_order(order_id, f"k_{order_id}", seconds=seconds))
    other_room = sample_offer("of_2", room_id="r_2")
    await order_stores.orders.create(sample_order("o_x", "k_x", buyer="u_2", offer=other_room))

    newest_first = ["o_h", "o_f", "o_d", "o_0", "o_g", "o_c", "o_b", "o_a", "o_e"]
    pages = await _pages(order_stores, scope, limit)
    assert [i for page in pages for i in page] == newest_first
    assert [len(page) for page in pages[:-1]] == [limit] * (len(pages) - 1)


async def test_a_page_after_a_key_no_order_has(order_stores: Stores) -> None:
    for i in range(4):
        await order_stores.orders.create(sample_order(f"o_{i}", f"k_{i}", seconds=i))
    between = PageKey(T0 + timedelta(seconds=2), "o_2a")  # after o_2 in the same millisecond
    assert [o.id for o in await order_stores.orders.list_for_buyer("u_1", 10, after=between)] == [
        "o_2",
        "o_1",
        "o_0",
    ]
    later = PageKey(T0 + timedelta(seconds=1, milliseconds=1), "o_0")
    assert [o.id for o in await order_stores.orders.list_for_room("r_1", 10, after=later)] == [
        "o_1",
        "o_0",
    ]
    oldest = PageKey(T0, "o_0")
    assert await order_stores.orders.list_for_room("r_1", 10, after=oldest) == []
