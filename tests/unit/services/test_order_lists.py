"""Listing orders through the service, on the memory adapters: who may list a room's orders,
and keyset pages that show every order once, however many share a creation time."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from server.domain.errors import Forbidden, InvalidInput, NotFound
from server.domain.identity import Identity, Role
from server.domain.orders import Order
from server.domain.pages import PageKey, decode_cursor, encode_cursor
from server.services.orders import OrderService
from tests.unit.services.shop import HOST, Shop, buyer

ADMIN = Identity("admin-1", Role.ADMIN)
OTHER_HOST = Identity("host-2", Role.HOST)


async def place(shop: Shop, who: Identity, times: list[int]) -> list[Order]:
    """One order of `who` at each of `times` (seconds after the shop's clock now; repeats share
    a creation time), newest first as a list shows them."""
    offer = await shop.launch(quantity=len(times), limit=len(times))
    start = shop.clock()
    placed = []
    for i, second in enumerate(sorted(times)):
        shop.clock.now = start + timedelta(seconds=second)
        order, _ = await shop.claim(offer, who, f"k-{offer.id}-{i}")
        placed.append(order)
    return sorted(placed, key=lambda o: (o.created_at, o.id), reverse=True)


async def all_pages(
    service: OrderService, who: Identity, limit: int, room_id: str | None = None
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await service.list(who, room_id=room_id, limit=limit, cursor=cursor)
        pages.append([o.id for o in page.items])
        if page.next_cursor is None:
            return pages
        assert len(pages) < 50, "the pages never end"
        cursor = page.next_cursor


# Who may list a room's orders ------------------------------------------------------------------


async def test_the_rooms_host_and_an_admin_list_its_orders(shop: Shop) -> None:
    placed = await place(shop, buyer(1), [1, 2]) + await place(shop, buyer(2), [3])
    newest_first = sorted(placed, key=lambda o: (o.created_at, o.id), reverse=True)
    for who in (HOST, ADMIN):
        page = await shop.orders.list(who, room_id=shop.room_id, limit=10)
        assert [o.id for o in page.items] == [o.id for o in newest_first]
        assert page.next_cursor is None


@pytest.mark.parametrize(
    "who",
    [OTHER_HOST, buyer(1), Identity("host-1", Role.SHOPPER), Identity("mod", Role.MODERATOR)],
    ids=["another host", "a buyer in the room", "the host's id as a shopper", "a moderator"],
)
async def test_anybody_else_is_refused_a_rooms_orders(shop: Shop, who: Identity) -> None:
    await place(shop, buyer(1), [1])
    with pytest.raises(Forbidden) as refused:
        await shop.orders.list(who, room_id=shop.room_id, limit=10)
    assert refused.value.message == "only the room's host can list its orders"


async def test_another_host_is_refused_even_a_room_without_orders(shop: Shop) -> None:
    with pytest.raises(Forbidden):
        await shop.orders.list(OTHER_HOST, room_id=shop.room_id, limit=10)


async def test_an_order_is_seen_by_its_buyer_the_rooms_host_and_an_admin(shop: Shop) -> None:
    (order,) = await place(shop, buyer(1), [1])
    for who in (buyer(1), HOST, ADMIN):
        assert (await shop.orders.get(order.id, who)).id == order.id
    # The room's host's id in a shopper's token is refused, as the room's list refuses it.
    for who in (
        buyer(2),
        OTHER_HOST,
        Identity("host-1", Role.SHOPPER),
        Identity("m", Role.MODERATOR),
    ):
        with pytest.raises(NotFound):
            await shop.orders.get(order.id, who)


@pytest.mark.parametrize("who", [HOST, ADMIN, buyer(1)], ids=["host", "admin", "shopper"])
async def test_an_unknown_room_is_not_found(shop: Shop, who: Identity) -> None:
    with pytest.raises(NotFound):
        await shop.orders.list(who, room_id="r_nope", limit=10)


async def test_without_a_room_everyone_lists_their_own_orders(shop: Shop) -> None:
    mine = await place(shop, buyer(1), [1, 2])
    await place(shop, buyer(2), [3])
    page = await shop.orders.list(buyer(1), room_id=None, limit=10)
    assert [o.id for o in page.items] == [o.id for o in mine]
    assert (await shop.orders.list(HOST, room_id=None, limit=10)).items == []


# Pages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 8])
async def test_pages_show_every_order_once_in_order(shop: Shop, limit: int) -> None:
    # Eight orders, most sharing a creation time with another: the id breaks the ties.
    placed = await place(shop, buyer(1), [1, 1, 1, 2, 3, 3, 3, 3])
    pages = await all_pages(shop.orders, buyer(1), limit)
    assert [i for page in pages for i in page] == [o.id for o in placed]
    assert all(len(page) == limit for page in pages[:-1])
    # A page ends the list exactly when nothing is left: no empty last page.
    assert len(pages) == -(-len(placed) // limit)


async def test_a_rooms_orders_page_the_same_way(shop: Shop) -> None:
    placed = await place(shop, buyer(1), [1, 1, 2]) + await place(shop, buyer(2), [2, 2, 5])
    newest_first = sorted(placed, key=lambda o: (o.created_at, o.id), reverse=True)
    for who in (HOST, ADMIN):
        pages = await all_pages(shop.orders, who, 2, room_id=shop.room_id)
        assert [i for page in pages for i in page] == [o.id for o in newest_first]


async def test_orders_placed_between_pages_do_not_shift_them(shop: Shop) -> None:
    placed = await place(shop, buyer(1), [1, 2, 2, 3, 4])
    first = await shop.orders.list(buyer(1), room_id=None, limit=2)
    assert [o.id for o in first.items] == [o.id for o in placed[:2]]
    shop.clock.advance(minutes=1)
    newer = await place(shop, buyer(1), [0, 0])  # a minute on: newer than every page so far
    rest = await all_pages(shop.orders, buyer(1), 2)  # from the top: the new ones come first
    assert [i for page in rest for i in page][:2] == [o.id for o in newer]
    following = await shop.orders.list(buyer(1), room_id=None, limit=2, cursor=first.next_cursor)
    assert [o.id for o in following.items] == [o.id for o in placed[2:4]]
    last = await shop.orders.list(buyer(1), room_id=None, limit=2, cursor=following.next_cursor)
    assert [o.id for o in last.items] == [placed[4].id]
    assert last.next_cursor is None


async def test_a_cursor_still_counts_the_rooms_rights(shop: Shop) -> None:
    await place(shop, buyer(1), [1, 2])
    page = await shop.orders.list(HOST, room_id=shop.room_id, limit=1)
    assert page.next_cursor is not None
    with pytest.raises(Forbidden):
        await shop.orders.list(OTHER_HOST, room_id=shop.room_id, limit=1, cursor=page.next_cursor)
    with pytest.raises(Forbidden):  # who may list comes first: no hint from the cursor's check
        await shop.orders.list(OTHER_HOST, room_id=shop.room_id, limit=1, cursor="forged")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_cursor_that_is_not_one_given_is_invalid(shop: Shop) -> None:
    await place(shop, buyer(1), [1, 2, 3])
    good = (await shop.orders.list(buyer(1), room_id=None, limit=1)).next_cursor
    assert good is not None
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    edited = [
        good[:i] + alphabet[(alphabet.index(c) + 1) % 64] + good[i + 1 :]
        for i, c in enumerate(good)
    ]
    bad = [
        "",
        "not a cursor",
        "bm90IGEgY3Vyc29y",  # "not a cursor", base64url
        good + "=",
        good + "A",
        good * 10,
        _b64(b"1790000000000.o_1"),  # the key alone, without its checksum
        *edited,  # every character changed
        *(good[:n] for n in range(len(good))),  # cut short anywhere
    ]
    for cursor in bad:
        with pytest.raises(InvalidInput) as refused:
            await shop.orders.list(buyer(1), room_id=None, limit=1, cursor=cursor)
        assert refused.value.code == "invalid_cursor", cursor


async def test_a_cursor_is_taken_back_only_by_the_list_that_gave_it(shop: Shop) -> None:
    placed = await place(shop, buyer(1), [1, 2])
    await place(shop, buyer(2), [1, 2])
    mine = (await shop.orders.list(buyer(1), room_id=None, limit=1)).next_cursor
    the_rooms = (await shop.orders.list(HOST, room_id=shop.room_id, limit=1)).next_cursor
    assert mine is not None
    assert the_rooms is not None
    the_room_list = encode_cursor(PageKey.of(placed[0]), "rooms?status=live")
    for who, room_id, cursor in [
        (buyer(2), None, mine),  # another buyer's
        (HOST, None, the_rooms),  # the room's, sent to "mine"
        (buyer(1), None, the_room_list),  # another list altogether
    ]:
        with pytest.raises(InvalidInput) as refused:
            await shop.orders.list(who, room_id=room_id, limit=1, cursor=cursor)
        assert refused.value.code == "invalid_cursor"
    with pytest.raises(InvalidInput):
        await shop.orders.list(HOST, room_id=shop.room_id, limit=1, cursor=mine)


def test_a_cursor_holds_its_key_to_the_millisecond() -> None:
    key = PageKey(datetime(2026, 11, 28, 12, 0, 1, 7000, tzinfo=UTC), "o_Zx-9_a")
    cursor = encode_cursor(key, "orders?buyer=u1")
    assert decode_cursor(cursor, "orders?buyer=u1") == key
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
