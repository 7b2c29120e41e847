"""Stock reservations in process memory: the same contract as the Redis adapter, for unit tests
and a single process without Redis.

Every method runs without awaiting between its reads and writes, so on one event loop each is
as atomic as the Redis scripts are. Times are compared as epoch milliseconds, as Redis does, so
both answer alike at the window's edges. An offer is forgotten when Redis would expire it (a day
after its end), at the next launch or rebuild.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from server.domain.offers import (
    PENDING_BATCH,
    AttachOutcome,
    ClaimOutcome,
    ClaimResult,
    PendingReservation,
    RecoveredClaim,
    StockFigure,
    StockSnapshot,
    UnconfirmedStock,
    being_restored,
    most_claims,
    stock_kept_until_ms,
    tally_recovered,
    validate_claim,
    validate_stock_plan,
)
from server.domain.times import epoch_ms, from_epoch_ms


@dataclass(slots=True)
class _Reservation:
    reservation_id: str
    buyer_id: str
    quantity: int
    created_ms: int
    tried_ms: int  # its last try: the reaper waits ORPHAN_AFTER from it
    order_id: str | None = None
    released: bool = False


@dataclass(slots=True)
class _Offer:
    quantity: int
    per_user_limit: int
    starts_ms: int
    ends_ms: int
    stock: int
    kept_until_ms: int = 0  # epoch ms: when Redis would expire it (set as it is stored)
    # As Redis starts it (see StockFigure): its clock in microseconds (see _first_version).
    version: int = field(default_factory=lambda: time.time_ns() // 1000)
    build: int = field(init=False)  # its first version (see ClaimResult)
    stopped: bool = False
    sold_out: bool = False  # stopped as sold out: its stock stays 0 (see stop_if_sold_out)
    held: dict[str, int] = field(default_factory=dict)
    claims_made: dict[str, int] = field(default_factory=dict)  # by buyer (see most_claims)
    unconfirmed: str | None = None  # rebuilt: claims wait for confirm_open with this token
    rebuilt_from: int = 0  # orders, one recovered claim each
    claims: dict[str, _Reservation] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.build = self.version


def _first_version(after_build: int | None) -> int:
    """As the REBUILD script's: the clock, unless it is behind the last build checked."""
    clock = time.time_ns() // 1000
    return clock if after_build is None or clock > after_build else after_build + 2**32


def _restored(claim: RecoveredClaim) -> _Reservation:
    """A claim as its order remembers it (a rebuild's, or one remembered released)."""
    return _Reservation(
        claim.restored_reservation_id,
        claim.buyer_id,
        claim.quantity,
        created_ms=0,  # has an order, so the reaper never looks at it
        tried_ms=0,
        order_id=claim.order_id,
        released=not claim.held,
    )


def _stop(offer: _Offer, *, sold_out: bool) -> None:
    if not offer.stopped or (sold_out and not offer.sold_out):
        offer.version += 1
    offer.stopped = True
    if sold_out:
        offer.sold_out, offer.stock = True, 0


class MemoryStockReservations:
    def __init__(self) -> None:
        self._offers: dict[str, _Offer] = {}
        self._next_id = 0

    def _keep(self, offer_id: str, offer: _Offer) -> None:
        """Store a new offer, forgetting first those Redis would have expired by now."""
        now_ms = int(time.time() * 1000)
        for expired in [o for o, kept in self._offers.items() if kept.kept_until_ms <= now_ms]:
            del self._offers[expired]
        offer.kept_until_ms = stock_kept_until_ms(offer.ends_ms, now_ms)
        self._offers[offer_id] = offer

    def flush(self) -> None:
        """Lose every offer, as a Redis restart without persistence would (tests)."""
        self._offers.clear()

    def forget(self, offer_id: str) -> None:
        """Lose one offer, as Redis losing its keys would (tests)."""
        self._offers.pop(offer_id, None)

    async def open_offer(
        self,
        offer_id: str,
        *,
        quantity: int,
        per_user_limit: int,
        starts_at: datetime,
        ends_at: datetime,
    ) -> bool:
        validate_stock_plan(quantity, per_user_limit, starts_at, ends_at)
        if offer_id in self._offers:
            return False
        self._keep(
            offer_id,
            _Offer(
                quantity, per_user_limit, epoch_ms(starts_at), epoch_ms(ends_at), stock=quantity
            ),
        )
        return True

    async def claim(
        self, offer_id: str, buyer_id: str, quantity: int, idempotency_key: str, now: datetime
    ) -> ClaimResult:
        validate_claim(buyer_id, quantity, idempotency_key)
        offer = self._offers.get(offer_id)
        if offer is None:
            return ClaimResult(ClaimOutcome.PAUSED)
        # The same order of checks as the Redis script; keep the two in step.
        known = offer.claims.get(idempotency_key)
        if known is not None:
            if known.buyer_id != buyer_id:
                return ClaimResult(ClaimOutcome.KEY_REUSED, offer.stock)
            if known.order_id is None and not known.released and known.quantity == quantity:
                known.tried_ms = epoch_ms(now)
            return ClaimResult(
                ClaimOutcome.DUPLICATE,
                offer.stock,
                known.reservation_id,
                known.order_id,
                known.quantity,
                known.released,
                stock_version=offer.version,
                stock_build=offer.build,
            )
        now_ms = epoch_ms(now)
        if offer.stopped or now_ms >= offer.ends_ms:
            return ClaimResult(ClaimOutcome.NOT_ACTIVE, offer.stock)
        if now_ms < offer.starts_ms:
            return ClaimResult(ClaimOutcome.NOT_ACTIVE, offer.stock, early=True)
        if offer.unconfirmed is not None:
            return ClaimResult(ClaimOutcome.PAUSED)
        if offer.stock == 0:
            return ClaimResult(ClaimOutcome.SOLD_OUT, offer.stock)
        if offer.held.get(buyer_id, 0) + quantity > offer.per_user_limit:
            return ClaimResult(ClaimOutcome.LIMIT_REACHED, offer.stock)
        made = offer.claims_made.get(buyer_id, 0)
        if made >= most_claims(offer.per_user_limit):
            return ClaimResult(ClaimOutcome.CLAIMS_SPENT, offer.stock)
        if offer.stock < quantity:
            return ClaimResult(ClaimOutcome.SOLD_OUT, offer.stock)
        offer.stock -= quantity
        offer.version += 1
        offer.held[buyer_id] = offer.held.get(buyer_id, 0) + quantity
        offer.claims_made[buyer_id] = made + 1
        reservation_id = self._new_reservation_id()
        reservation = _Reservation(reservation_id, buyer_id, quantity, now_ms, now_ms)
        offer.claims[idempotency_key] = reservation
        return ClaimResult(
            ClaimOutcome.RESERVED,
            offer.stock,
            reservation_id,
            quantity=quantity,
            released=False,
            stock_version=offer.version,
            stock_build=offer.build,
        )

    async def attach_order(
        self, offer_id: str, idempotency_key: str, order_id: str, *, quantity: int | None = None
    ) -> AttachOutcome:
        offer = self._offers.get(offer_id)
        if offer is None or offer.unconfirmed is not None:  # lost, or not yet checked
            return AttachOutcome.PAUSED
        known = offer.claims.get(idempotency_key)
        if known is None:
            return AttachOutcome.UNKNOWN
        if known.released:
            return AttachOutcome.RELEASED
        if known.order_id is None and quantity not in (None, known.quantity):
            return AttachOutcome.UNKNOWN
        if known.order_id is None:
            known.order_id = order_id
        # A key names one order: a second, different one holds no stock of its own.
        return AttachOutcome.ATTACHED if known.order_id == order_id else AttachOutcome.UNKNOWN

    async def release(
        self,
        offer_id: str,
        idempotency_key: str,
        *,
        orphan_only: bool = False,
        for_order: str | None = None,
        reservation_id: str | None = None,
    ) -> bool:
        offer = self._offer_or_paused(offer_id)
        known = offer.claims.get(idempotency_key)
        if known is None or known.released:
            return False
        if reservation_id is not None and known.reservation_id != reservation_id:
            return False
        if orphan_only and known.order_id is not None:
            return False
        if known.order_id is None:
            known.order_id = for_order
        known.released = True
        if not offer.sold_out:
            offer.stock += known.quantity
            offer.version += 1
        left = offer.held.get(known.buyer_id, 0) - known.quantity
        if left > 0:
            offer.held[known.buyer_id] = left
        else:
            offer.held.pop(known.buyer_id, None)
        return True

    async def remember_released(self, offer_id: str, claim: RecoveredClaim) -> bool:
        if claim.held:
            raise ValueError("a claim remembered holds nothing")
        offer = self._offer_or_paused(offer_id)
        if claim.idempotency_key in offer.claims:
            return False
        offer.claims[claim.idempotency_key] = _restored(claim)
        offer.claims_made[claim.buyer_id] = offer.claims_made.get(claim.buyer_id, 0) + 1
        return True

    async def knows_claim(self, offer_id: str, idempotency_key: str) -> bool:
        offer = self._offers.get(offer_id)
        return offer is not None and idempotency_key in offer.claims

    async def remaining(self, offer_id: str) -> int:
        return self._offer_or_paused(offer_id).stock

    async def figure(self, offer_id: str) -> StockFigure:
        offer = self._offer_or_paused(offer_id)
        return StockFigure(offer.stock, offer.version)

    async def pending_without_order(
        self, offer_id: str, older_than: datetime
    ) -> list[PendingReservation]:
        offer = self._offers.get(offer_id)
        if offer is None:
            return []
        cutoff = epoch_ms(older_than)
        unattached = sorted(
            (r.tried_ms, key, r)
            for key, r in offer.claims.items()
            if r.order_id is None and not r.released and r.tried_ms < cutoff
        )
        return [
            PendingReservation(
                key, r.reservation_id, r.buyer_id, r.quantity, from_epoch_ms(r.created_ms)
            )
            for _, key, r in unattached[:PENDING_BATCH]
        ]

    async def stop(self, offer_id: str, *, sold_out: bool = False) -> int | None:
        offer = self._offers.get(offer_id)
        if offer is None:
            return None
        _stop(offer, sold_out=sold_out)
        if offer.unconfirmed is not None:  # not yet checked: what it counts may be outdated
            return None
        return max(0, offer.quantity - offer.stock)

    async def stop_if_sold_out(self, offer_id: str) -> bool:
        offer = self._offer_or_paused(offer_id)
        if offer.sold_out:
            return True
        if offer.stopped or offer.stock > 0:
            return False
        _stop(offer, sold_out=True)
        return True

    async def unconfirmed(self, offer_id: str) -> UnconfirmedStock | None:
        offer = self._offers.get(offer_id)
        if offer is None or offer.unconfirmed is None:
            return None
        held = frozenset(
            r.order_id for r in offer.claims.values() if r.order_id is not None and not r.released
        )
        return UnconfirmedStock(offer.unconfirmed, offer.rebuilt_from, offer.build, held)

    async def drop_unconfirmed(self, offer_id: str, token: str) -> None:
        offer = self._offers.get(offer_id)
        if offer is not None and offer.unconfirmed == token:
            del self._offers[offer_id]

    async def confirm_open(self, offer_id: str, token: str) -> None:
        offer = self._offers.get(offer_id)
        if offer is not None and offer.unconfirmed == token:
            offer.unconfirmed = None

    async def is_ready(self, offer_id: str) -> bool:
        return offer_id in self._offers

    async def rebuild(
        self,
        offer_id: str,
        *,
        quantity: int,
        per_user_limit: int,
        starts_at: datetime,
        ends_at: datetime,
        stopped: bool,
        claims: Sequence[RecoveredClaim],
        sold_out: bool = False,
        after_build: int | None = None,
    ) -> bool:
        validate_stock_plan(quantity, per_user_limit, starts_at, ends_at)
        held = tally_recovered(claims)
        stopped = stopped or sold_out
        if offer_id in self._offers:
            return False
        offer = _Offer(
            quantity,
            per_user_limit,
            epoch_ms(starts_at),
            epoch_ms(ends_at),
            # Never below zero, even if the orders hold more than the offer had (a bug
            # elsewhere): claims then simply find it sold out.
            stock=0 if sold_out else max(0, quantity - sum(held.values())),
            stopped=stopped,
            sold_out=sold_out,
            held=held,
            unconfirmed=None if stopped else self._new_reservation_id(),  # any unique token
            rebuilt_from=len(claims),
            version=_first_version(after_build),
        )
        for c in claims:
            offer.claims_made[c.buyer_id] = offer.claims_made.get(c.buyer_id, 0) + 1
            offer.claims[c.idempotency_key] = _restored(c)
        self._keep(offer_id, offer)
        return True

    async def snapshot(self, offer_id: str) -> StockSnapshot | None:
        offer = self._offers.get(offer_id)
        if offer is None:
            return None
        return StockSnapshot(
            quantity=offer.quantity,
            per_user_limit=offer.per_user_limit,
            starts_at=from_epoch_ms(offer.starts_ms),
            ends_at=from_epoch_ms(offer.ends_ms),
            remaining=offer.stock,
            stopped=offer.stopped,
            held_by_buyer=dict(offer.held),
        )

    def _offer_or_paused(self, offer_id: str) -> _Offer:
        offer = self._offers.get(offer_id)
        if offer is None:
            raise being_restored(offer_id)
        return offer

    def _new_reservation_id(self) -> str:
        self._next_id += 1
        return f"rsv_{self._next_id}"
