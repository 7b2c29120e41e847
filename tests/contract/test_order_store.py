"""One suite for the order store, run against memory and a real MongoDB replica set: idempotent
creation, reads, the compare-and-set on status, and figures that follow every move."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from server.domain.errors import Conflict, InvalidInput, NotFound
from server.domain.figures import OfferFigures
from server.domain.offers import NO_BUILD
from server.domain.orders import Address, OrderStatus, Transition, is_legal_history
from tests.contract.order_samples import (
    T0,
    TTL,
    Stores,
    figures_of_offer,
    move_order,
    sample_offer,
    sample_order,
)

S = OrderStatus


async def test_order_reads_back_exactly(order_stores: Stores) -> None:
    order = sample_order()
    assert await order_stores.orders.create(order) == order
    got = await order_stores.orders.get("o_1")
    assert got == order
    assert str(got.total.amount) == "25.00"  # Decimal, trailing zero kept
    assert got.product["price"] == {"amount": "12.50", "currency": "USD"}
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.history[0].at.utcoffset() == timedelta(0)
    assert await order_stores.orders.by_key("of_1", "k_1") == order
    assert await order_stores.orders.by_key("of_1", "k_other") is None
    assert await order_stores.orders.by_key("of_other", "k_1") is None


async def test_missing_order_is_not_found(order_stores: Stores) -> None:
    with pytest.raises(NotFound):
        await order_stores.orders.get("o_missing")


async def test_create_is_idempotent_by_offer_and_key(order_stores: Stores) -> None:
    first = sample_order("o_1", "k_1")
    await order_stores.orders.create(first)
    retry = await order_stores.orders.create(sample_order("o_2", "k_1", quantity=1, seconds=5))
    assert retry == first
    with pytest.raises(NotFound):
        await order_stores.orders.get("o_2")
    # The same key on another offer is another claim.
    other = sample_order("o_3", "k_1", offer=sample_offer("of_2"))
    assert await order_stores.orders.create(other) == other
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=1, units=2, placed=1, held_units=2
    )


async def test_concurrent_creates_with_one_key_make_one_order(order_stores: Stores) -> None:
    attempts = [sample_order(f"o_{i}", "k_same", quantity=3) for i in range(20)]
    results = await asyncio.gather(*(order_stores.orders.create(o) for o in attempts))
    assert len({r.id for r in results}) == 1
    assert len(await order_stores.orders.list_for_buyer("u_1", 100)) == 1
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=1, units=3, placed=1, held_units=3
    )


async def test_concurrent_creates_all_count(order_stores: Stores) -> None:
    # Creates made at the same moment are written together; every one of them counts.
    orders = [sample_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(30)]
    await asyncio.gather(*(order_stores.orders.create(o) for o in orders))
    assert await order_stores.orders.count_of_offer("of_1") == 30
    assert len(await order_stores.orders.of_offer("of_1")) == 30
    assert await order_stores.orders.count_of_offer("of_2") == 0
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=30, units=30, placed=30, held_units=30
    )


async def test_creates_arriving_together_each_get_their_own_answer(order_stores: Stores) -> None:
    # The Mongo store writes creates made at the same moment in one unordered insert; a taken
    # key or a taken id among them must not cost the others their orders.
    first = await order_stores.orders.create(sample_order("o_old", "k_old", buyer="u_old"))
    results = await asyncio.gather(
        order_stores.orders.create(sample_order("o_1", "k_1", buyer="u_1")),
        order_stores.orders.create(
            sample_order("o_retry", "k_old", buyer="u_old")
        ),  # a retry: first stands
        order_stores.orders.create(
            sample_order("o_old", "k_clash", buyer="u_2")
        ),  # the id is taken
        order_stores.orders.create(sample_order("o_2", "k_2", buyer="u_2", quantity=3)),
        order_stores.orders.create(
            sample_order("o_2b", "k_2", buyer="u_2", quantity=3)
        ),  # same key again
        return_exceptions=True,
    )
    assert results[0] == sample_order("o_1", "k_1", buyer="u_1")
    assert results[1] == first
    assert isinstance(results[2], Conflict)
    assert results[2].code == "order_exists"
    assert results[3] == results[4] == sample_order("o_2", "k_2", buyer="u_2", quantity=3)
    assert await order_stores.orders.by_key("of_1", "k_clash") is None
    for missing in ("o_retry", "o_2b"):
        with pytest.raises(NotFound):
            await order_stores.orders.get(missing)
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=3, units=7, placed=3, held_units=7
    )


async def test_a_retry_among_new_creates_costs_them_nothing(order_stores: Stores) -> None:
    first = await order_stores.orders.create(sample_order("o_old", "k_old", buyer="u_old"))
    fresh = [sample_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(5)]
    retry = sample_order("o_retry", "k_old", buyer="u_old")
    twin = sample_order("o_twin", "k_0", buyer="u_0", quantity=1)  # a retry of fresh[0], together
    results = await asyncio.gather(*(order_stores.orders.create(o) for o in [*fresh, retry, twin]))
    assert results[:5] == fresh
    assert results[5] == first
    assert results[6] == fresh[0]
    assert results[6] is not results[0]  # equal, but not one object two requests could change
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=6, units=7, placed=6, held_units=7
    )


async def test_an_order_id_taken_by_another_key_is_a_conflict(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order("o_1", "k_1"))
    with pytest.raises(Conflict) as error:
        await order_stores.orders.create(sample_order("o_1", "k_2"))
    assert error.value.code == "order_exists"
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=1, units=2, placed=1, held_units=2
    )


async def test_save_move_appends_the_transition(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order())
    paid = await move_order(order_stores.orders, "o_1", S.PAID)
    shipped = await move_order(order_stores.orders, "o_1", S.FULFILLING, minutes=2)
    got = await order_stores.orders.get("o_1")
    assert got == shipped
    assert [(h.from_status, h.to_status) for h in got.history] == [
        (None, S.PENDING_PAYMENT),
        (S.PENDING_PAYMENT, S.PAID),
        (S.PAID, S.FULFILLING),
    ]
    assert got.history[1] == paid.history[1]
    assert is_legal_history(got.history)


async def test_save_move_is_a_compare_and_set_on_status(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order())
    stale = await order_stores.orders.get("o_1")
    await move_order(order_stores.orders, "o_1", S.CANCELLED)

    stale.move(S.PAID, at=T0 + timedelta(minutes=1), by="system")
    with pytest.raises(Conflict) as error:
        await order_stores.orders.save_move(stale, expected=S.PENDING_PAYMENT)
    assert error.value.code == "order_changed"
    got = await order_stores.orders.get("o_1")
    assert got.status is S.CANCELLED
    assert len(got.history) == 2

    missing = sample_order("o_missing", "k_missing")
    missing.move(S.PAID, at=T0, by="system")
    with pytest.raises(NotFound):
        await order_stores.orders.save_move(missing, expected=S.PENDING_PAYMENT)


async def test_a_move_that_returns_units_notes_it_until_they_are_back(order_stores: Stores) -> None:
    for n in range(3):
        await order_stores.orders.create(sample_order(f"o_{n}", f"k_{n}", buyer=f"u_{n}"))
    await move_order(order_stores.orders, "o_0", S.PAID)  # no units back
    cancelled = await order_stores.orders.get("o_1")
    cancelled.move(S.CANCELLED, at=T0, by="u_1", reason="changed my mind")
    await order_stores.orders.save_move(cancelled, expected=S.PENDING_PAYMENT, units_to_return=True)
    assert await order_stores.orders.units_to_return(10) == [cancelled]  # as stored, with its move
    stale = await order_stores.orders.get("o_2")
    await move_order(order_stores.orders, "o_2", S.PAID)  # paid meanwhile
    stale.move(S.EXPIRED, at=T0 + TTL, by="system")
    with pytest.raises(Conflict):  # a move refused notes nothing either
        await order_stores.orders.save_move(stale, expected=S.PENDING_PAYMENT, units_to_return=True)
    assert [o.id for o in await order_stores.orders.units_to_return(10)] == ["o_1"]
    await order_stores.orders.units_returned("o_1")
    await order_stores.orders.units_returned("o_1")  # twice is fine
    assert await order_stores.orders.units_to_return(10) == []
    assert await order_stores.orders.get("o_1") == cancelled  # the order itself is unchanged


@pytest.mark.parametrize("recorded", [False, True], ids=["set by hand", "a step no move makes"])
async def test_save_move_refuses_a_move_its_history_does_not_show(
    order_stores: Stores, recorded: bool
) -> None:
    await order_stores.orders.create(sample_order())
    order = await order_stores.orders.get("o_1")
    order.status = S.FULFILLING  # by hand, or as a step skipping payment, which is no move
    if recorded:
        order.history.append(Transition(S.PENDING_PAYMENT, S.FULFILLING, T0 + TTL, "system"))
    with pytest.raises(InvalidInput):
        await order_stores.orders.save_move(order, expected=S.PENDING_PAYMENT)
    assert (await order_stores.orders.get("o_1")).status is S.PENDING_PAYMENT


async def test_two_racing_moves_one_wins(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order())
    payment, expiry = await order_stores.orders.get("o_1"), await order_stores.orders.get("o_1")
    payment.move(S.PAID, at=T0 + TTL, by="u_1")
    expiry.move(S.EXPIRED, at=T0 + TTL, by="system")

    results = await asyncio.gather(
        order_stores.orders.save_move(payment, expected=S.PENDING_PAYMENT),
        order_stores.orders.save_move(expiry, expected=S.PENDING_PAYMENT),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], Conflict)
    assert errors[0].code == "order_changed"
    got = await order_stores.orders.get("o_1")
    assert len(got.history) == 2
    assert is_legal_history(got.history)
    figures = await figures_of_offer(order_stores.orders, "of_1")
    if got.status is S.PAID:
        expected = OfferFigures("of_1", 1, 2, 1, 2, {"USD": Decimal("25.00")}, 1, 2)
    else:
        expected = OfferFigures("of_1", placed=1)
    assert figures == expected


async def test_figures_follow_payment_and_refund(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order("o_1", "k_1", quantity=2))
    await order_stores.orders.create(sample_order("o_2", "k_2", quantity=1, buyer="u_2"))
    figures = functools.partial(figures_of_offer, order_stores.orders)
    assert await figures("of_1") == OfferFigures("of_1", orders=2, units=3, placed=2, held_units=3)

    await move_order(order_stores.orders, "o_1", S.PAID)
    assert await figures("of_1") == OfferFigures(
        "of_1", 2, 3, 1, 2, {"USD": Decimal("25.00")}, 2, 3
    )
    await move_order(order_stores.orders, "o_2", S.PAID)
    paid_both = OfferFigures("of_1", 2, 3, 2, 3, {"USD": Decimal("37.50")}, 2, 3)
    assert await figures("of_1") == paid_both
    await move_order(order_stores.orders, "o_2", S.FULFILLING)  # changes no figure
    assert await figures("of_1") == paid_both

    await move_order(order_stores.orders, "o_1", S.REFUNDED)
    after_refund = await figures("of_1")
    # Claimed still, but its units went back: o_2's 1 unit is all the offer holds.
    assert after_refund == OfferFigures("of_1", 2, 3, 1, 1, {"USD": Decimal("12.50")}, 2, 1)
    assert str(after_refund.gmv["USD"]) == "12.50"  # exact decimal, never a float


async def test_a_currency_whose_payments_were_all_refunded_has_no_gmv(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order("o_1", "k_1", quantity=2))
    await move_order(order_stores.orders, "o_1", S.PAID)
    await move_order(order_stores.orders, "o_1", S.REFUNDED, minutes=2)
    # Still claimed (it was bought), no longer paid: no "0.00" left behind for the currency.
    # Its units went back to the product: it holds none.
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures(
        "of_1", orders=1, units=2, placed=1, held_units=0
    )


async def test_figures_of_several_offers_in_one_call(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order("o_1", "k_1", quantity=2))
    await order_stores.orders.create(
        sample_order("o_2", "k_2", quantity=1, offer=sample_offer("of_2"))
    )
    await move_order(order_stores.orders, "o_2", S.PAID)
    assert await order_stores.orders.figures_of_offers(["of_2", "of_none", "of_1"]) == [
        OfferFigures("of_2", 1, 1, 1, 1, {"USD": Decimal("12.50")}, 1, 1),
        OfferFigures("of_none"),
        OfferFigures("of_1", orders=1, units=2, placed=1, held_units=2),
    ]
    assert await order_stores.orders.figures_of_offers([]) == []


async def test_figures_of_every_offer_of_a_room(order_stores: Stores) -> None:
    await order_stores.orders.create(sample_order("o_1", "k_1", quantity=2))
    await order_stores.orders.create(
        sample_order("o_2", "k_2", quantity=1, offer=sample_offer("of_2"))
    )
    elsewhere = sample_offer("of_3", room_id="r_2")
    await order_stores.orders.create(sample_order("o_3", "k_3", offer=elsewhere))
    await move_order(order_stores.orders, "o_2", S.PAID)
    in_room = await order_stores.orders.figures_in_room("r_1")
    assert sorted(in_room, key=lambda figures: figures.offer_id) == [
        OfferFigures("of_1", orders=1, units=2, placed=1, held_units=2),
        OfferFigures("of_2", 1, 1, 1, 1, {"USD": Decimal("12.50")}, 1, 1),
    ]
    assert await order_stores.orders.figures_in_room("r_none") == []


async def test_figures_drop_expired_and_cancelled_orders_but_count_them_placed(
    order_stores: Stores,
) -> None:
    await order_stores.orders.create(sample_order("o_1", "k_1", quantity=2))
    await order_stores.orders.create(sample_order("o_2", "k_2", quantity=3))
    await move_order(order_stores.orders, "o_1", S.EXPIRED)
    expired_one = OfferFigures("of_1", orders=1, units=3, placed=2, held_units=3)
    assert await figures_of_offer(order_stores.orders, "of_1") == expired_one
    await move_order(order_stores.orders, "o_2", S.CANCELLED)
    assert await figures_of_offer(order_stores.orders, "of_1") == OfferFigures("of_1", placed=2)
    assert await figures_of_offer(order_stores.orders, "of_never") == OfferFigures("of_never")


async def test_due_to_expire_oldest_first(order_stores: Stores) -> None:
    for i in range(4):
        await order_stores.orders.create(sample_order(f"o_{i}", f"k_{i}", seconds=10 * (3 - i)))
    await move_order(order_stores.orders, "o_1", S.PAID)
    now = T0 + TTL + timedelta(seconds=10)

    due = await order_stores.orders.due_to_expire(now, 10)
    assert [o.id for o in due] == ["o_3", "o_2"]  # o_0 expires later; o_1 is paid
    assert [o.id for o in await order_stores.orders.due_to_expire(now, 1)] == ["o_3"]
    assert await order_stores.orders.due_to_expire(T0 + TTL - timedelta(milliseconds=1), 10) == []
    assert all(o.status is S.PENDING_PAYMENT and o.reservation_expires_at <= now for o in due)


async def test_an_order_taken_under_an_older_address_rule_is_still_read(
    order_stores: Stores,
) -> None:
    # Taken before postal codes were held to their country's rule: a US address without one.
    # Reading it back must not apply today's rule, or the order (and every expiry sweep that
    # meets it first) would fail for good.
    legacy = Address(name="Mia", line1="1 Main St", city="Austin", postal_code="", country="US")
    order = dataclasses.replace(sample_order("o_old", "k_old"), shipping_address=legacy)
    await order_stores.orders.create(order)
    assert (await order_stores.orders.get("o_old")).shipping_address == legacy
    due = await order_stores.orders.due_to_expire(T0 + TTL, 10)
    assert [o.id for o in due] == ["o_old"]
    assert [o.id for o in await order_stores.orders.of_offer(order.offer_id)] == ["o_old"]


async def test_orders_of_an_offer(order_stores: Stores) -> None:
    moves = {"o_0": [], "o_1": [S.PAID], "o_2": [S.CANCELLED], "o_3": [S.EXPIRED]}
    moves |= {"o_4": [S.PAID, S.REFUNDED], "o_5": [S.PAID, S.FULFILLING]}
    for i, (order_id, path) in enumerate(moves.items()):
        await order_stores.orders.create(sample_order(order_id, f"k_{i}", seconds=i))
        for to in path:
            await move_order(order_stores.orders, order_id, to)
    await order_stores.orders.create(sample_order("o_other", "k_0", offer=sample_offer("of_2")))

    orders = await order_stores.orders.of_offer("of_1")
    assert [o.id for o in orders] == list(moves)  # oldest first, whatever their status
    assert sorted(o.id for o in orders if o.holds_stock) == ["o_0", "o_1", "o_5"]
    assert await order_stores.orders.of_offer("of_none") == []


async def test_orders_landing_under_watched_keys_are_found(order_stores: Stores) -> None:
    until = T0 + timedelta(minutes=15)
    for key in ("k_1", "k_2"):
        await order_stores.orders.watch_key("of_1", key, until)
    await order_stores.orders.watch_key("of_1", "k_3", T0 + timedelta(minutes=1))
    await order_stores.orders.watch_key("of_1", "k_3", T0)  # noted again, earlier: the later stands
    assert await order_stores.orders.landed_late(T0, 10) == []  # nothing has landed
    await order_stores.orders.create(sample_order("o_1", "k_1"))
    await order_stores.orders.create(sample_order("o_3", "k_3"))
    await order_stores.orders.create(sample_order("o_4", "k_4"))  # its key is not watched
    await order_stores.orders.create(sample_order("o_5", "k_2", offer=sample_offer("of_2")))

    landed = await order_stores.orders.landed_late(T0, 10)
    assert sorted(o.id for o in landed) == ["o_1", "o_3"]
    assert landed[0] == await order_stores.orders.get(landed[0].id)
    seen: set[str] = set()
    for _ in range(40):  # one key looked under a call, a new one each time: none left out
        sample = await order_stores.orders.landed_late(T0, 1)
        assert len(sample) <= 1
        seen |= {o.id for o in sample}
    assert seen == {"o_1", "o_3"}
    watch_over = T0 + timedelta(minutes=1)  # k_3's
    assert [o.id for o in await order_stores.orders.landed_late(watch_over, 10)] == ["o_1"]
    # The offer's keys still watched, landed or not, for a rebuild to count their orders last.
    assert await order_stores.orders.watched_keys("of_1", T0) == {"k_1", "k_2", "k_3"}
    assert await order_stores.orders.watched_keys("of_1", watch_over) == {"k_1", "k_2"}
    assert await order_stores.orders.watched_keys("of_2", T0) == set()
    await order_stores.orders.unwatch_key("of_1", "k_1")
    await order_stores.orders.unwatch_key("of_1", "k_never_watched")
    assert [o.id for o in await order_stores.orders.landed_late(T0, 10)] == ["o_3"]


async def test_pending_orders_of_watched_offers_are_found_until_checked(
    order_stores: Stores,
) -> None:
    assert await order_stores.orders.unchecked_after_rebuild(T0, 10) == []  # nothing watched
    for i, offer_id in enumerate(("of_1", "of_2", "of_3")):
        await order_stores.orders.create(
            sample_order(f"o_{i}", "k_0", offer=sample_offer(offer_id))
        )
    await order_stores.orders.create(sample_order("o_paid", "k_1"))
    await move_order(order_stores.orders, "o_paid", S.PAID)
    await order_stores.orders.watch_offer("of_1", T0 + timedelta(minutes=15))
    await order_stores.orders.watch_offer("of_2", T0 + timedelta(minutes=1))
    await order_stores.orders.watch_offer("of_2", T0)  # noted again, earlier: the later stands

    async def unchecked(now: datetime = T0) -> list[tuple[str, int]]:
        found = await order_stores.orders.unchecked_after_rebuild(now, 10)
        return sorted((order.id, build) for order, build in found)

    # Pending, of a watched offer, with the build of its last stock checked (none yet).
    assert await unchecked() == [("o_0", NO_BUILD), ("o_1", NO_BUILD)]
    ((first, _),) = await order_stores.orders.unchecked_after_rebuild(T0, 1)  # as stored
    assert first == await order_stores.orders.get(first.id)
    build = 1_796_000_000_000_000
    await order_stores.orders.note_stock_checked("of_1", build)
    await order_stores.orders.checked_after_rebuild(["o_0"], build)  # held by of_1's stock
    await order_stores.orders.checked_after_rebuild([], build)
    assert await unchecked() == [("o_1", NO_BUILD)]
    await order_stores.orders.checked_after_rebuild(["o_0"], build - 1)  # landing late: no effect
    assert await unchecked() == [("o_1", NO_BUILD)]
    await order_stores.orders.note_stock_checked("of_1", build + 1)  # a later stock checked
    assert await unchecked() == [("o_0", build + 1), ("o_1", NO_BUILD)]  # not noted held by it
    await order_stores.orders.checked_after_rebuild(["o_0"], build + 1)
    assert await unchecked(T0 + timedelta(minutes=1)) == []  # of_2's watch is over too
    await move_order(order_stores.orders, "o_1", S.CANCELLED)  # no longer pending
    await order_stores.orders.create(sample_order("o_late", "k_2"))  # of_1's, watched until T0 + 15
    assert await unchecked() == [("o_late", build + 1)]
    assert await unchecked(T0 + timedelta(minutes=15)) == []


async def test_a_rebuild_learns_the_last_stock_checked_and_the_orders_held(
    order_stores: Stores,
) -> None:
    orders, low, high = order_stores.orders, 1_796_000_000_000_001, 1_796_000_000_000_002
    await orders.watch_offer("of_1", T0 + timedelta(minutes=15))
    assert await orders.last_stock_checked("of_1") is None  # no stock let in after a rebuild
    assert await orders.note_stock_checked("of_1", high) == high
    assert await orders.note_stock_checked("of_1", low) == high  # the highest stands, answered
    assert await orders.last_stock_checked("of_1") == high
    assert await orders.last_stock_checked("of_2") is None
    for order in (sample_order("o_1", "k_1"), sample_order("o_2", "k_2", seconds=1)):
        await orders.create(order)
    for build in (high, low, high):
        await orders.checked_after_rebuild(["o_2"], build)  # every stock noted holding it
    assert await orders.checked_of_offer("of_1") == {"o_2": {low, high}}
    assert await orders.checked_of_offer("of_2") == {}
