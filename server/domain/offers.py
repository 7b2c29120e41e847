"""Flash offers: the rules for launching one, its life (scheduled → active → ended) and the
vocabulary of stock reservations shared by every `StockReservations` adapter. Pure, no I/O.

Times are UTC-aware and cut to the millisecond: the reservation script compares epoch
milliseconds and MongoDB keeps no finer, so an offer reads back exactly as it was planned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from server.domain.errors import Conflict, InvalidInput, LiveshopError, OfferPaused
from server.domain.money import Money
from server.domain.products import Product
from server.domain.rooms import Room, RoomStatus, ensure_hosts_own
from server.domain.times import iso_z, utc_ms, whole_seconds

MIN_DURATION = timedelta(seconds=10)
MAX_DURATION = timedelta(hours=24)
MAX_COUNTDOWN = timedelta(hours=1)
# Bounds what one claim may ask for and the key it is stored under; both reach Redis. The key
# is scoped (domain.identity.scoped_key): a user id (128 characters, up to 384 escaped), ":"
# and the client's key (100).
MAX_CLAIM_QUANTITY = 1000
MAX_IDEMPOTENCY_KEY_CHARS = 512
# A reservation with no order attached, and not sent again for this long (a retry shows its
# claimer lives, perhaps waiting out a MongoDB outage), belongs to a claimer that died mid-claim.
ORPHAN_AFTER = timedelta(seconds=30)
# The reaper takes orphaned reservations in batches, oldest first, so one scan stays short.
PENDING_BATCH = 1000
# Added to a process's clock to take in every reservation made so far, by any process, whatever
# the skew between their clocks.
SKEW_MARGIN = timedelta(hours=1)
# How long after an offer's end is finished (its stock stopped) a unit reserved before it may
# still become an order: its claimer writing it (seconds, bounded by the stores' timeouts), or a
# shopper sending again a claim whose answer was lost. Until then the offer books the units it
# had taken when its stock stopped (units_booked). Then the offer is settled: every reservation
# still without an order is given back, and the offer books only what its orders claim of its
# product's stock.
LATE_ORDERS = timedelta(minutes=1)


class EndReason(StrEnum):
    SOLD_OUT = "sold_out"
    EXPIRED = "expired"
    STOPPED = "stopped"


def units_booked(offers: Iterable[FlashOffer], claimed: Mapping[str, int]) -> int:
    """The units of a product that its offers take from its stock: each its whole quantity
    while it runs and until its end is finished; then the units it had taken when the end
    stopped its stock (`taken_at_end`: only those may still become orders; the whole quantity
    if the stock was lost then) until it has settled (see LATE_ORDERS); then the units its
    orders still hold (`claimed`, by offer id: cancelled, expired and refunded orders gave
    theirs back).
    Each figure is at most the one before, so a booking read once never grows afterwards."""
    return sum(_booked(offer, claimed) for offer in offers)


def _booked(offer: FlashOffer, claimed: Mapping[str, int]) -> int:
    ceiling = offer.units_orders_may_hold
    if offer.settled_at is None:
        return ceiling
    return min(claimed.get(offer.id, 0), ceiling)


def same_launch(
    offer: FlashOffer,
    *,
    product_id: str,
    price: Money,
    quantity: int,
    per_user_limit: int,
    duration: timedelta,
    countdown: timedelta,
) -> bool:
    """Whether a launch sent again with `offer`'s idempotency key asks for that same offer."""
    return (
        offer.product_id == product_id
        and offer.price == price
        and offer.quantity == quantity
        and offer.per_user_limit == per_user_limit
        and offer.ends_at - offer.starts_at == duration
        and offer.starts_at - offer.created_at == countdown
    )


def ensure_stock_left(product: Product, quantity: int, *, booked: int) -> None:
    """A new offer of `quantity` fits in what the product's other offers leave of its stock."""
    if quantity > product.stock:
        raise Conflict(
            f"quantity {quantity} is above the product's stock of {product.stock}",
            code="insufficient_stock",
        )
    if quantity > product.stock - booked:
        left = max(product.stock - booked, 0)
        raise Conflict(
            f"quantity {quantity} is above the {left} units of the product's stock of"
            f" {product.stock} that its other offers leave",
            code="insufficient_stock",
        )


@dataclass(frozen=True, slots=True)
class FlashOffer:
    id: str
    room_id: str
    product_id: str
    host_id: str
    price: Money
    quantity: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    created_at: datetime
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    settled_at: datetime | None = None  # see LATE_ORDERS
    # Units reserved or sold when the stop that finished its end stopped its stock, the whole
    # quantity for a sold-out end (None before, or when the stock was lost then): no more can
    # be taken since.
    taken_at_end: int | None = None
    # False from when its launch stored it until the launch counted it against its product's
    # stock (services/bookings.py), or it ended: the room is not shown it before.
    counted: bool = True

    @property
    def ended_sold_out(self) -> bool:
        """Whether it ended sold out: every stop of its stock marks it so (see
        StockReservations.stop), and units given back later go to the product."""
        return self.end_reason is EndReason.SOLD_OUT

    @property
    def units_orders_may_hold(self) -> int:
        """Its quantity; once its end stopped its stock, what it had taken then (units given
        back since went to the product)."""
        if self.taken_at_end is None:
            return self.quantity
        return min(self.taken_at_end, self.quantity)

    def remaining_at_end(self) -> int | None:
        """What it had left when it ended, which no longer moves: units its orders give back
        later go to its product, not to the offer. None until the end has stopped its stock
        (or if the stock was lost then): until then the reservation store knows."""
        if self.ended_sold_out:
            return 0
        return None if self.taken_at_end is None else self.left_after(self.taken_at_end)

    def left_after(self, taken: int) -> int:
        """What it has left once it has taken `taken` (reserved or sold, not given back)."""
        return 0 if self.ended_sold_out else max(self.quantity - taken, 0)


def plan_offer(
    *,
    offer_id: str,
    room: Room,
    product: Product,
    price: Money,
    quantity: int,
    per_user_limit: int,
    now: datetime,
    duration: timedelta,
    countdown: timedelta = timedelta(0),
) -> FlashOffer:
    """A new offer, or the first rule it breaks. The start is given as a countdown from the
    server's `now`, never as a client clock reading, so every viewer sees the same times."""
    if room.status is not RoomStatus.LIVE:
        raise Conflict(
            f"room is {room.status}, offers run only while it is live", code="room_not_live"
        )
    ensure_hosts_own(room, product)
    if not isinstance(price, Money) or price.amount <= 0:
        raise InvalidInput("price must be a positive amount of money", code="invalid_price")
    if price.currency != product.price.currency:
        raise InvalidInput(
            f"price must be in the product's currency {product.price.currency}",
            code="currency_mismatch",
        )
    _check_quantity_and_limit(quantity, per_user_limit)
    ensure_stock_left(product, quantity, booked=0)
    if not timedelta(0) <= countdown <= MAX_COUNTDOWN:
        raise InvalidInput(
            f"countdown must be between 0 and {whole_seconds(MAX_COUNTDOWN)} seconds",
            code="invalid_countdown",
        )
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise InvalidInput(
            f"duration must be between {whole_seconds(MIN_DURATION)} and "
            f"{whole_seconds(MAX_DURATION)} seconds",
            code="invalid_duration",
        )
    created = utc_ms(now)
    starts = utc_ms(created + countdown)
    return FlashOffer(
        id=offer_id,
        room_id=room.id,
        product_id=product.id,
        host_id=room.host_id,
        price=price,
        quantity=quantity,
        per_user_limit=per_user_limit,
        starts_at=starts,
        ends_at=utc_ms(starts + duration),
        created_at=created,
    )


# -- Stock reservations --------------------------------------------------------------------------

# How long a reservation store keeps an offer after its end: long after its last reservation
# could expire unpaid (15 minutes), short enough that finished offers do not pile up.
STOCK_KEPT_AFTER_END = timedelta(days=1)


def stock_kept_until_ms(ends_ms: int, now_ms: int) -> int:
    """When a reservation store may forget an offer (epoch ms): `STOCK_KEPT_AFTER_END` after its
    end, or after `now_ms` for an offer written after its end (tests, a late rebuild), which
    must not vanish the moment it is written."""
    return max(ends_ms, now_ms) + int(STOCK_KEPT_AFTER_END.total_seconds() * 1000)


def being_restored(offer_id: str) -> OfferPaused:
    """What a reservation store that lost the offer answers until it is rebuilt."""
    return OfferPaused(f"offer {offer_id} is being restored")


# Claims a buyer may make on one offer beyond its per-user limit, whatever became of them: room
# for a change of mind (an order cancelled, or left to expire, frees its units and the buyer's
# count), but not for a claim-and-cancel loop, each turn of which leaves an order and a key in
# Redis behind.
CLAIMS_BEYOND_LIMIT = 3


def most_claims(per_user_limit: int) -> int:
    """How many claims one buyer may make on an offer of this per-user limit."""
    return per_user_limit + CLAIMS_BEYOND_LIMIT


class ClaimOutcome(StrEnum):
    RESERVED = "reserved"
    DUPLICATE = "duplicate"  # the key was seen before: same reservation, no more stock
    SOLD_OUT = "sold_out"
    LIMIT_REACHED = "limit_reached"
    CLAIMS_SPENT = "claims_spent"  # the buyer made most_claims() on this offer already
    NOT_ACTIVE = "not_active"  # before the start, at or after the end, or stopped
    # The reservation store lost this offer, or a rebuild has yet to confirm it still runs:
    # wait for a rebuild.
    PAUSED = "paused"
    KEY_REUSED = "key_reused"  # another buyer already used this key on this offer


@dataclass(frozen=True, slots=True)
class StockFigure:
    """Units left, and the version of the stock that had them.

    Figures read apart, by several processes, reach the room by different paths and may
    arrive out of order; the version puts them back in order. Every change of an offer's
    stock (a reservation, a release, the stop at its end) raises it by one. A store that opens
    an offer, or rebuilds one it lost, starts it at its own clock in microseconds: above any
    version the offer had before the loss, since its stock never changes a million times a
    second. None: the figure an ended offer keeps, which nothing later replaces."""

    remaining: int
    version: int | None


# The build that stands for "no stock checked yet" in the notes of orders held
# (OrderStore.checked_after_rebuild): below every stock's, so that an order noted held then is
# checked again once a stock is.
NO_BUILD = 0


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: ClaimOutcome
    remaining: int | None = None  # None only when paused: nobody knows
    reservation_id: str | None = None
    order_id: str | None = None  # a duplicate's order, once attached
    quantity: int = 0  # units the reservation holds (reserved, duplicate)
    released: bool = False  # a duplicate whose units were already given back
    stock_version: int | None = None  # reserved, duplicate: the version `remaining` is of
    # Reserved, duplicate: which stock the claim holds units of, should Redis lose it (its
    # `build`: its first version, each stock the store opens or rebuilds has its own). Kept on
    # the order, it tells the next rebuild the claims made on a rebuilt stock from orders that
    # land late (stock_rebuilds.recovered_claims).
    stock_build: int | None = None
    early: bool = False  # not active: before the offer's start, neither stopped nor over

    def figure(self) -> StockFigure | None:
        """The stock as this claim left it (reserved) or found it (duplicate)."""
        if self.remaining is None or self.stock_version is None:
            return None
        return StockFigure(self.remaining, self.stock_version)


def claim_error(result: ClaimResult, offer: FlashOffer) -> LiveshopError | None:
    """The error a refused claim of `offer` reports (HTTP 409 / 503, `error` frame), None when
    it held."""
    match result.outcome:
        case ClaimOutcome.RESERVED | ClaimOutcome.DUPLICATE:
            return None
        case ClaimOutcome.SOLD_OUT if result.remaining:  # fewer left than asked for
            units = "unit is" if result.remaining == 1 else "units are"
            return Conflict(
                f"only {result.remaining} {units} left: claim fewer", code="insufficient_stock"
            )
        case ClaimOutcome.NOT_ACTIVE if result.early:  # its countdown runs
            starts_at = iso_z(offer.starts_at)
            return Conflict(
                f"the offer starts at {starts_at}: claim then",
                code="offer_not_active",
                details={"starts_at": starts_at},  # "not yet", told from "over" without words
            )
        case ClaimOutcome.NOT_ACTIVE if result.remaining != 0:
            return Conflict("the offer is not active", code="offer_not_active")
        # Selling out ends the offer: a buyer a moment late hears "sold out", not "not active".
        case ClaimOutcome.SOLD_OUT | ClaimOutcome.NOT_ACTIVE:
            return Conflict("the offer is sold out", code="sold_out")
        case ClaimOutcome.LIMIT_REACHED:
            return Conflict(
                "that would take you over this offer's per-user limit", code="limit_reached"
            )
        case ClaimOutcome.CLAIMS_SPENT:  # the same code: a client need not tell them apart
            return Conflict(
                f"you have made {most_claims(offer.per_user_limit)} claims on this offer,"
                " the most one buyer may",
                code="limit_reached",
            )
        case ClaimOutcome.PAUSED:
            return OfferPaused("claims are paused for a moment, try again")
        case ClaimOutcome.KEY_REUSED:
            return Conflict(
                "this idempotency key belongs to another claim", code="idempotency_key_reused"
            )


class AttachOutcome(StrEnum):
    ATTACHED = "attached"  # the reservation now names this order (or already did)
    RELEASED = "released"  # given back before the order arrived: the order holds no stock
    UNKNOWN = "unknown"  # the store knows the offer but not the key (a rebuild missed it)
    PAUSED = "paused"  # the store lost the offer: its rebuild from the orders decides


@dataclass(frozen=True, slots=True)
class PendingReservation:
    """A reservation no order was attached to (its claimer may have died): for the reaper."""

    idempotency_key: str
    reservation_id: str
    buyer_id: str
    quantity: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UnconfirmedStock:
    """A stock a rebuild left unconfirmed (StockReservations.unconfirmed): its token; how many
    orders its rebuilder read (one recovered claim each); its build (see ClaimResult); and the
    orders it holds units for."""

    token: str
    orders_read: int
    build: int
    held_orders: frozenset[str]


@dataclass(frozen=True, slots=True)
class RecoveredClaim:
    """A claim as the orders remember it, to rebuild a lost offer. `held` is whether the order
    still holds its units (see `orders.HOLDS_STOCK`); released ones keep their key so a retried
    claim still finds its order."""

    idempotency_key: str
    buyer_id: str
    quantity: int
    order_id: str
    held: bool
    reservation_id: str | None = None  # the order's; a retried claim gets it back

    @property
    def restored_reservation_id(self) -> str:
        return self.reservation_id or self.order_id


@dataclass(frozen=True, slots=True)
class StockSnapshot:
    quantity: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    remaining: int
    stopped: bool
    held_by_buyer: dict[str, int]


def validate_stock_plan(
    quantity: int, per_user_limit: int, starts_at: datetime, ends_at: datetime
) -> None:
    """What a reservation store needs to hold an offer's stock, checked before it is written."""
    _check_quantity_and_limit(quantity, per_user_limit)
    if utc_ms(starts_at) >= utc_ms(ends_at):
        raise InvalidInput("an offer must end after it starts", code="invalid_duration")


def _check_quantity_and_limit(quantity: int, per_user_limit: int) -> None:
    if not _is_int(quantity) or quantity < 1:
        raise InvalidInput("quantity must be a whole number of at least 1", code="invalid_quantity")
    if not _is_int(per_user_limit) or not 1 <= per_user_limit <= quantity:
        raise InvalidInput(
            f"per-user limit must be between 1 and the quantity ({quantity})",
            code="invalid_per_user_limit",
        )


def validate_claim(buyer_id: str, quantity: int, idempotency_key: str) -> None:
    """Refuse a claim that could corrupt the counts (a negative quantity would add stock)."""
    if not buyer_id:
        raise InvalidInput("a claim needs a buyer", code="invalid_buyer")
    if not _is_int(quantity) or not 1 <= quantity <= MAX_CLAIM_QUANTITY:
        raise InvalidInput(
            f"quantity must be between 1 and {MAX_CLAIM_QUANTITY}", code="invalid_quantity"
        )
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(
            f"idempotency key must have 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            code="invalid_idempotency_key",
        )


def tally_recovered(claims: Iterable[RecoveredClaim]) -> dict[str, int]:
    """Units held per buyer by the recovered claims; one claim per key, or InvalidInput."""
    seen: set[str] = set()
    held: dict[str, int] = {}
    for claim in claims:
        if claim.idempotency_key in seen:
            raise InvalidInput(
                f"idempotency key {claim.idempotency_key!r} recovered twice",
                code="duplicate_idempotency_key",
            )
        seen.add(claim.idempotency_key)
        validate_claim(claim.buyer_id, claim.quantity, claim.idempotency_key)
        if claim.held:
            held[claim.buyer_id] = held.get(claim.buyer_id, 0) + claim.quantity
    return held


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
