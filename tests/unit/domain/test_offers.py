"""Flash offer rules: launching, the offer's states, ending once, and the claim vocabulary."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import Conflict, Forbidden, InvalidInput, LiveshopError, Unavailable
from server.domain.money import Money
from server.domain.offers import (
    MAX_COUNTDOWN,
    MAX_DURATION,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MIN_DURATION,
    ClaimOutcome,
    ClaimResult,
    FlashOffer,
    RecoveredClaim,
    claim_error,
    plan_offer,
    tally_recovered,
    validate_claim,
    validate_stock_plan,
)
from server.domain.products import Product
from server.domain.rooms import Room, RoomStatus
from server.domain.times import epoch_ms, from_epoch_ms, utc_ms

T0 = datetime(2026, 5, 14, 10, 0, 0, 123456, tzinfo=UTC)
T0_MS = datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)


def usd(amount: str) -> Money:
    return Money(Decimal(amount), "USD")


def live_room(status: RoomStatus = RoomStatus.LIVE) -> Room:
    return Room(id="r1", host_id="host-1", title="Show", status=status, created_at=T0)


def product(stock: int = 50, owner: str = "host-1") -> Product:
    return Product(
        id="p1", owner_id=owner, title="Tea", price=usd("20.00"), stock=stock, created_at=T0
    )


def plan(**changes: Any) -> FlashOffer:
    args: dict[str, Any] = {
        "offer_id": "o1",
        "room": live_room(),
        "product": product(),
        "price": usd("9.90"),
        "quantity": 10,
        "per_user_limit": 2,
        "now": T0,
        "duration": timedelta(minutes=5),
    }
    args.update(changes)
    return plan_offer(**args)


# -- plan_offer ----------------------------------------------------------------------------------


def test_a_planned_offer_starts_now_and_carries_server_times_cut_to_the_millisecond() -> None:
    offer = plan()
    assert offer.starts_at == T0_MS
    assert offer.ends_at == T0_MS + timedelta(minutes=5)
    assert offer.created_at == T0_MS
    assert (offer.room_id, offer.product_id, offer.host_id) == ("r1", "p1", "host-1")
    assert offer.price == usd("9.90")
    assert (offer.quantity, offer.per_user_limit) == (10, 2)
    assert offer.end_reason is None
    assert offer.ended_at is None


def test_a_countdown_moves_the_start_and_the_end() -> None:
    offer = plan(countdown=timedelta(seconds=30), duration=timedelta(seconds=10))
    assert offer.starts_at == T0_MS + timedelta(seconds=30)
    assert offer.ends_at == T0_MS + timedelta(seconds=40)


def test_times_in_another_zone_are_stored_in_utc() -> None:
    tokyo = T0.astimezone(timezone(timedelta(hours=9)))
    offer = plan(now=tokyo)
    assert offer.starts_at == T0_MS
    assert offer.starts_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("changes", "error", "code"),
    [
        ({"room": live_room(RoomStatus.SCHEDULED)}, Conflict, "room_not_live"),
        ({"room": live_room(RoomStatus.ENDED)}, Conflict, "room_not_live"),
        ({"product": product(owner="host-2")}, Forbidden, "not_your_product"),
        ({"price": usd("0")}, InvalidInput, "invalid_price"),
        ({"price": usd("-1.00")}, InvalidInput, "invalid_price"),
        ({"price": Decimal("9.90")}, InvalidInput, "invalid_price"),
        ({"price": 9.9}, InvalidInput, "invalid_price"),
        ({"price": Money(Decimal("9.90"), "EUR")}, InvalidInput, "currency_mismatch"),
        ({"quantity": 0}, InvalidInput, "invalid_quantity"),
        ({"quantity": -3}, InvalidInput, "invalid_quantity"),
        ({"quantity": True}, InvalidInput, "invalid_quantity"),
        ({"quantity": 2.0}, InvalidInput, "invalid_quantity"),
        ({"quantity": 51}, Conflict, "insufficient_stock"),
        ({"per_user_limit": 0}, InvalidInput, "invalid_per_user_limit"),
        ({"per_user_limit": 11}, InvalidInput, "invalid_per_user_limit"),
        ({"countdown": timedelta(seconds=-1)}, InvalidInput, "invalid_countdown"),
        ({"countdown": MAX_COUNTDOWN + timedelta(seconds=1)}, InvalidInput, "invalid_countdown"),
        ({"duration": MIN_DURATION - timedelta(seconds=1)}, InvalidInput, "invalid_duration"),
        ({"duration": MAX_DURATION + timedelta(seconds=1)}, InvalidInput, "invalid_duration"),
        ({"now": T0.replace(tzinfo=None)}, InvalidInput, "invalid_time"),
    ],
)
def test_bad_offers_are_refused_with_a_specific_code(
    changes: dict[str, Any], error: type[LiveshopError], code: str
) -> None:
    with pytest.raises(error) as raised:
        plan(**changes)
    assert raised.value.code == code


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": 50, "per_user_limit": 50},  # the whole stock, one buyer may take it all
        {"quantity": 1, "per_user_limit": 1},
        {"countdown": MAX_COUNTDOWN},
        {"duration": MIN_DURATION},
        {"duration": MAX_DURATION},
        {
            "price": Money(Decimal("990"), "JPY"),
            "product": replace(product(), price=Money(Decimal("2000"), "JPY")),
        },
    ],
)
def test_the_edges_of_each_range_are_allowed(changes: dict[str, Any]) -> None:
    plan(**changes)


# -- the claim vocabulary ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "remaining", "error", "code"),
    [
        (ClaimOutcome.SOLD_OUT, 0, Conflict, "sold_out"),
        (ClaimOutcome.LIMIT_REACHED, 3, Conflict, "limit_reached"),
        (ClaimOutcome.CLAIMS_SPENT, 3, Conflict, "limit_reached"),
        (ClaimOutcome.NOT_ACTIVE, 3, Conflict, "offer_not_active"),
        # Selling out ends the offer: a buyer a moment late hears why.
        (ClaimOutcome.NOT_ACTIVE, 0, Conflict, "sold_out"),
        (ClaimOutcome.PAUSED, None, Unavailable, "offer_paused"),
        (ClaimOutcome.KEY_REUSED, 3, Conflict, "idempotency_key_reused"),
    ],
)
def test_refused_claims_map_to_the_public_error_codes(
    outcome: ClaimOutcome, remaining: int | None, error: type[LiveshopError], code: str
) -> None:
    problem = claim_error(ClaimResult(outcome, remaining), plan())
    assert isinstance(problem, error)
    assert problem.code == code


@pytest.mark.parametrize(("remaining", "detail"), [(1, "only 1 unit is left"), (3, "only 3 units")])
def test_a_claim_for_more_than_is_left_is_told_what_is_left(remaining: int, detail: str) -> None:
    problem = claim_error(ClaimResult(ClaimOutcome.SOLD_OUT, remaining), plan())
    assert isinstance(problem, Conflict)
    assert problem.code == "insufficient_stock"  # not sold out: fewer units would do
    assert problem.message.startswith(detail)


@pytest.mark.parametrize("outcome", [ClaimOutcome.RESERVED, ClaimOutcome.DUPLICATE])
def test_held_claims_are_no_error(outcome: ClaimOutcome) -> None:
    assert claim_error(ClaimResult(outcome, 3, "rsv_1", quantity=1), plan()) is None


@pytest.mark.parametrize(
    ("buyer", "quantity", "key", "code"),
    [
        ("", 1, "k", "invalid_buyer"),
        ("b", 0, "k", "invalid_quantity"),
        ("b", -1, "k", "invalid_quantity"),
        ("b", 1001, "k", "invalid_quantity"),
        ("b", True, "k", "invalid_quantity"),
        ("b", 1, "", "invalid_idempotency_key"),
        ("b", 1, "k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1), "invalid_idempotency_key"),
    ],
)
def test_malformed_claims_are_refused(buyer: str, quantity: int, key: str, code: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_claim(buyer, quantity, key)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("quantity", "limit", "ends", "code"),
    [
        (0, 1, T0 + timedelta(seconds=1), "invalid_quantity"),
        (5, 6, T0 + timedelta(seconds=1), "invalid_per_user_limit"),
        (5, 0, T0 + timedelta(seconds=1), "invalid_per_user_limit"),
        (5, 1, T0, "invalid_duration"),
    ],
)
def test_a_stock_plan_must_make_sense(quantity: int, limit: int, ends: datetime, code: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_stock_plan(quantity, limit, T0, ends)
    assert raised.value.code == code


def test_recovered_claims_count_only_held_units_and_each_key_once() -> None:
    claims = [
        RecoveredClaim("k1", "alice", 2, "ord1", held=True),
        RecoveredClaim("k2", "alice", 1, "ord2", held=False),
        RecoveredClaim("k3", "bob", 1, "ord3", held=True, reservation_id="rsv_3"),
    ]
    assert tally_recovered(claims) == {"alice": 2, "bob": 1}
    assert claims[0].restored_reservation_id == "ord1"
    assert claims[2].restored_reservation_id == "rsv_3"
    with pytest.raises(InvalidInput) as raised:
        tally_recovered([*claims, RecoveredClaim("k1", "carol", 1, "ord4", held=True)])
    assert raised.value.code == "duplicate_idempotency_key"


@given(st.datetimes(timezones=st.just(UTC)))
def test_epoch_milliseconds_round_trip_exactly(moment: datetime) -> None:
    ms = epoch_ms(moment)
    back = from_epoch_ms(ms)
    assert back == moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)
    assert epoch_ms(back) == ms


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))])))
def test_utc_ms_is_the_same_instant_in_utc_cut_to_the_millisecond(moment: datetime) -> None:
    cut = utc_ms(moment)
    assert cut.tzinfo is UTC
    assert cut.microsecond % 1000 == 0
    assert timedelta(0) <= moment - cut < timedelta(milliseconds=1)
    assert utc_ms(cut) == cut


def test_utc_ms_refuses_a_naive_time() -> None:
    with pytest.raises(InvalidInput) as refused:
        utc_ms(datetime(2026, 5, 14, 10, 0))
    assert refused.value.code == "invalid_time"
