"""Orders: the one state machine, the audit trail of every move, and the shipping address.
Pure, no I/O; the order store persists what these rules decide."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from babel import Locale

from server.domain.errors import Conflict, InvalidInput
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.offers import FlashOffer, validate_claim
from server.domain.postal_codes import ANY_POSTAL_CODE, postal_code_in, typed_postal_code
from server.domain.text import describe, hidden_character, refused_coming_in, shows_something
from server.domain.times import utc_ms

RESERVATION_TTL = timedelta(minutes=15)


class OrderStatus(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    FULFILLING = "fulfilling"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REFUNDED = "refunded"


_S = OrderStatus
# The only moves an order may make; everything not listed is refused.
TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = MappingProxyType(
    {
        _S.PENDING_PAYMENT: frozenset({_S.PAID, _S.CANCELLED, _S.EXPIRED}),
        _S.PAID: frozenset({_S.FULFILLING, _S.REFUNDED}),
        _S.FULFILLING: frozenset({_S.SHIPPED}),
        _S.SHIPPED: frozenset({_S.DELIVERED}),
        _S.DELIVERED: frozenset(),
        _S.CANCELLED: frozenset(),
        _S.EXPIRED: frozenset(),
        _S.REFUNDED: frozenset(),
    }
)
# Orders in these states keep their units out of the offer's stock. Cancelled and expired
# orders gave them back; a refund gives them back too (it only follows `paid`, before the goods
# leave), so rebuilding an offer from its orders counts exactly these.
HOLDS_STOCK = frozenset({_S.PENDING_PAYMENT, _S.PAID, _S.FULFILLING, _S.SHIPPED, _S.DELIVERED})


def can_move(from_status: OrderStatus, to_status: OrderStatus) -> bool:
    return to_status in TRANSITIONS[from_status]


def check_move(from_status: OrderStatus, to_status: OrderStatus) -> None:
    if not can_move(from_status, to_status):
        raise Conflict(
            f"an order cannot move from {from_status} to {to_status}", code="invalid_transition"
        )


def check_last_move(order: Order, expected: OrderStatus) -> None:
    """Refuse to store a move that the order's own history does not show as legal, so a store
    can never hold a status its audit trail does not explain."""
    step = order.history[-1] if order.history else None
    if (
        step is None
        or step.from_status is not expected
        or step.to_status is not order.status
        or not can_move(expected, order.status)
    ):
        raise InvalidInput(
            f"the order's last transition is not a move from {expected} to {order.status}",
            code="invalid_transition",
        )


@dataclass(frozen=True, slots=True)
class Transition:
    from_status: OrderStatus | None  # None for the creation
    to_status: OrderStatus
    at: datetime
    by: str  # a user id, or identity.SYSTEM for expiry and provider notifications
    reason: str = ""


def is_legal_history(history: Sequence[Transition]) -> bool:
    """Starts with the creation and chains legal moves, each from where the last one left."""
    if not history or history[0].from_status is not None:
        return False
    if history[0].to_status is not OrderStatus.PENDING_PAYMENT:
        return False
    return all(
        step.from_status is prev.to_status and can_move(prev.to_status, step.to_status)
        for prev, step in pairwise(history)
    )


# -- Shipping address ----------------------------------------------------------------------------

# Codes CLDR lists as territories but ISO 3166-1 does not assign to a country (EU, UN, the
# "unknown region" ZZ, pseudo-locales, exceptionally reserved codes such as IC and TA). Not XK,
# Kosovo's: user-assigned in ISO 3166, yet the code the EU, carriers, payment providers and
# Google's address data use for it, so its shoppers can be shipped to.
_NOT_ISO_3166 = frozenset(
    {"AC", "CP", "CQ", "DG", "EA", "EU", "EZ", "IC", "QO", "TA", "UN", "XA", "XB", "ZZ"}
)
MAX_NAME_CHARS, MAX_LINE_CHARS, MAX_CITY_CHARS = 100, 200, 100
_PHONE_NOISE = re.compile(r"[\s().-]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@cache
def countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 country codes, and XK (Kosovo)."""
    codes = (code for code in Locale("en").territories if isinstance(code, str))
    return frozenset(c for c in codes if len(c) == 2 and c.isalpha()) - _NOT_ISO_3166


@dataclass(frozen=True, slots=True)
class Address:
    """A validated shipping address; build one from user input with `Address.clean`."""

    name: str
    line1: str
    city: str
    postal_code: str  # empty where the country has none (Hong Kong) or needs none
    country: str  # ISO 3166-1 alpha-2
    line2: str | None = None
    phone: str | None = None  # E.164, for the carrier

    def __post_init__(self) -> None:
        _check_text("name", self.name, MAX_NAME_CHARS)
        _check_text("line1", self.line1, MAX_LINE_CHARS)
        if self.line2 is not None:
            _check_text("line2", self.line2, MAX_LINE_CHARS)
        _check_text("city", self.city, MAX_CITY_CHARS)
        if self.country not in countries():
            raise InvalidInput(
                f"{self.country!r} is not an ISO 3166-1 alpha-2 country code",
                code="invalid_country",
            )
        # Only its shape: the country's own rule is checked on the way in (`clean`), so an
        # order stored under an older rule is still read back.
        if self.postal_code and not ANY_POSTAL_CODE.fullmatch(self.postal_code):
            raise InvalidInput(
                f"postal code {self.postal_code!r} is not valid", code="invalid_postal_code"
            )
        if self.phone is not None and not _E164.fullmatch(self.phone):
            raise InvalidInput(
                "phone must be an international number such as +4930123456", code="invalid_phone"
            )

    @classmethod
    def clean(
        cls,
        *,
        name: str,
        line1: str,
        city: str,
        postal_code: str,
        country: str,
        line2: str | None = None,
        phone: str | None = None,
    ) -> Address:
        """Trim and normalise what people type (case, spacing, phone punctuation; a blank
        optional field becomes None; the postal code as the country's post writes it), then
        validate, the postal code against its country's rule too."""
        country = country.strip().upper()
        postal_code = typed_postal_code(postal_code)
        if country in countries():  # else the address refuses the country
            postal_code = postal_code_in(country, postal_code)
        name, line1, city = _squash(name), _squash(line1), _squash(city)
        line2 = _squash(line2 or "") or None
        typed = (("name", name), ("line1", line1), ("line2", line2 or ""), ("city", city))
        for field_name, value in typed:
            _refuse_what_came_later(field_name, value)
            _refuse_blank(field_name, value)
        return cls(
            name=name,
            line1=line1,
            line2=line2,
            city=city,
            postal_code=postal_code,
            country=country,
            phone=_PHONE_NOISE.sub("", phone or "") or None,
        )


def _refuse_what_came_later(field_name: str, value: str) -> None:
    # Coming in only: an address stored before this rule is still read back (`__post_init__`).
    if (found := refused_coming_in(value)) is not None:
        raise InvalidInput(
            f"address {field_name} contains a control or hidden character ({describe(found)})",
            code="invalid_address",
        )


def _refuse_blank(field_name: str, value: str) -> None:
    # Joiners, combining marks or a Hangul filler alone pass the checks of `_check_text`, and
    # make a label nobody can deliver to. Coming in only, as `_refuse_what_came_later`.
    if value and not shows_something(value):
        required = "is required" if field_name != "line2" else "shows nothing: leave it out"
        raise InvalidInput(
            f"address {field_name} {required} (it holds no letter, digit or sign)",
            code="invalid_address",
        )


def _squash(text: str) -> str:
    """Text as people mean it: composed (NFC), with single spaces and none at the ends."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _check_text(field_name: str, value: str, max_chars: int) -> None:
    if not value.strip():
        raise InvalidInput(f"address {field_name} is required", code="invalid_address")
    if len(value) > max_chars:
        raise InvalidInput(
            f"address {field_name} is longer than {max_chars} characters", code="invalid_address"
        )
    # Controls, invisible format characters and line breaks break labels and customs
    # declarations downstream; the joiners and marks that names and places need stay.
    if (hidden := hidden_character(value)) is not None:
        raise InvalidInput(
            f"address {field_name} contains a control or hidden character ({describe(hidden)})",
            code="invalid_address",
        )


# -- Orders --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Order:
    id: str
    idempotency_key: str
    offer_id: str
    room_id: str
    host_id: str
    buyer_id: str
    product: dict[str, Any]  # the product as it was sold: title, images, origin, HS code, ...
    unit_price: Money
    quantity: int
    total: Money
    shipping_address: Address
    status: OrderStatus
    created_at: datetime
    reservation_expires_at: datetime
    reservation_id: str | None = None
    stock_build: int | None = None  # of the stock it holds units of (see ClaimResult)
    history: list[Transition] = field(default_factory=list)

    def move(self, to: OrderStatus, *, at: datetime, by: str, reason: str = "") -> Transition:
        """Move to `to` if the state machine allows it, recording who did it and why."""
        check_move(self.status, to)
        moment = utc_ms(at)
        if to is OrderStatus.EXPIRED and moment < self.reservation_expires_at:
            raise Conflict("the reservation has not expired yet", code="not_expired_yet")
        step = Transition(self.status, to, moment, by, reason)
        self.history.append(step)
        self.status = to
        return step

    @property
    def holds_stock(self) -> bool:
        return self.status in HOLDS_STOCK


def line_total(unit_price: Money, quantity: int) -> Money:
    """Exact: Decimal times an integer keeps the currency's places (12.50 x 3 = 37.50)."""
    return Money(unit_price.amount * quantity, unit_price.currency)


def place_order(
    *,
    order_id: str,
    idempotency_key: str,
    offer: FlashOffer,
    buyer_id: str,
    product: Mapping[str, Any],
    quantity: int,
    address: Address,
    now: datetime,
    reservation_id: str | None = None,
    stock_build: int | None = None,
    reservation_ttl: timedelta = RESERVATION_TTL,
) -> Order:
    """A new order for reserved units, pending payment, its creation recorded."""
    validate_claim(buyer_id, quantity, idempotency_key)
    if quantity > offer.per_user_limit:
        raise InvalidInput(
            f"quantity is above the offer's per-user limit of {offer.per_user_limit}",
            code="invalid_quantity",
        )
    if reservation_ttl <= timedelta(0):
        raise InvalidInput("a reservation must last a while", code="invalid_reservation_ttl")
    created = utc_ms(now)
    order = Order(
        id=order_id,
        idempotency_key=idempotency_key,
        offer_id=offer.id,
        room_id=offer.room_id,
        host_id=offer.host_id,
        buyer_id=buyer_id,
        product=dict(product),
        unit_price=offer.price,
        quantity=quantity,
        total=line_total(offer.price, quantity),
        shipping_address=address,
        status=OrderStatus.PENDING_PAYMENT,
        created_at=created,
        reservation_expires_at=utc_ms(created + reservation_ttl),
        reservation_id=reservation_id,
        stock_build=stock_build,
    )
    order.history.append(
        Transition(None, OrderStatus.PENDING_PAYMENT, created, buyer_id, "claimed")
    )
    return order


def same_claim(order: Order, quantity: int, address: Address) -> bool:
    return order.quantity == quantity and order.shipping_address == address


def ensure_same_claim(order: Order, quantity: int, address: Address) -> None:
    """A claim sent again gets its order back only if it asks for the same: the same key with
    other terms is a client's mistake, and answering the first order would hide it."""
    if not same_claim(order, quantity, address):
        raise other_terms()


def claim_expired() -> Conflict:
    return Conflict("this claim ran out before its order was written", code="claim_expired")


def other_terms() -> Conflict:
    return Conflict(
        "this idempotency key was used for a claim with other terms", code="idempotency_key_reused"
    )


def not_cancellable(order: Order) -> Conflict:
    return Conflict(
        f"order is {order.status}, only pending payment can be cancelled",
        code="invalid_transition",
    )


def cancelled_by(order: Order, user_id: str) -> bool:
    return order.status is OrderStatus.CANCELLED and order.history[-1].by == user_id


def may_see(order: Order, who: Identity) -> bool:
    """The buyer, the room's host and an admin; for anyone else the order does not exist. The
    host as a host, as for the room's own list (`ensure_can_manage`): the host's id in a
    shopper's token sees only what it bought."""
    if who.role is Role.ADMIN or who.user_id == order.buyer_id:
        return True
    return who.role is Role.HOST and who.user_id == order.host_id
