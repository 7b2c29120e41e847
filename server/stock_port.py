"""The reservation store's role: an offer's stock, reserved atomically (Redis, or memory)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from server.domain.offers import (
    AttachOutcome,
    ClaimResult,
    PendingReservation,
    RecoveredClaim,
    StockFigure,
    StockSnapshot,
    UnconfirmedStock,
)


class StockReservations(Protocol):
    """An offer's stock, reserved atomically across every server process.

    Each offer holds: its quantity, per-user limit and window [starts_at, ends_at); the stock
    remaining; the units each buyer holds; and one reservation per idempotency key (buyer,
    units, reservation id, the order once attached, whether it was released). Keys are unique
    per offer: the claim service scopes a client's key by buyer before it gets here.

    Recovery: if the store loses an offer (Redis restarted without persistence, a failover),
    claims answer `paused` (never sold_out or reserved) until `rebuild` restores it from the
    orders and the rebuilder confirms it (`confirm_open`); `open_offer` is for the launch only
    and would reset the stock.
    """

    async def open_offer(
        self,
        offer_id: str,
        *,
        quantity: int,
        per_user_limit: int,
        starts_at: datetime,
        ends_at: datetime,
    ) -> bool:
        """Hold `quantity` units for a newly launched offer. False (and nothing changes) when
        the store already holds the offer."""
        ...

    async def claim(
        self, offer_id: str, buyer_id: str, quantity: int, idempotency_key: str, now: datetime
    ) -> ClaimResult:
        """One atomic step: a known key answers `duplicate` (same reservation and order, no more
        stock); then the window at `now` and the stop flag, the stock and the buyer's limit;
        then the units are reserved. InvalidInput for a quantity or key that is malformed.
        A `duplicate` with no order and not released is the caller's own reservation (a retry,
        or a reply lost to a reconnect): it goes on to write the order."""
        ...

    async def attach_order(
        self, offer_id: str, idempotency_key: str, order_id: str, *, quantity: int | None = None
    ) -> AttachOutcome:
        """Record the order written for a reservation, so retries find it and the reaper
        leaves it. Anything but ATTACHED or PAUSED means the order holds no stock: the caller
        must not keep it pending (released by the reaper first, missed by a rebuild, or, of
        another `quantity` than the reservation's, not this reservation's order). PAUSED while
        the stock is lost, or rebuilt and not yet confirmed (it may be outdated)."""
        ...

    async def release(
        self,
        offer_id: str,
        idempotency_key: str,
        *,
        orphan_only: bool = False,
        for_order: str | None = None,
        reservation_id: str | None = None,
    ) -> bool:
        """Give the reservation's units back to the stock and to the buyer's limit. True the
        one time it happens; False when already released, unknown, (with `orphan_only`, the
        reaper's way) an order is attached, or the key's is not `reservation_id`. The key
        stays, so a retry still finds its order; `for_order` names that order on a key that
        had none, in the same step. Unavailable
        (`offer_paused`) when the offer is lost: rebuild it, then release."""
        ...

    async def remember_released(self, offer_id: str, claim: RecoveredClaim) -> bool:
        """Keep the key of a claim the store does not know, naming its order and holding
        nothing, as a rebuild would: a claim sent again then finds that order. It counts as
        one of the buyer's claims. True when kept; False when the key is known (changing
        nothing); Unavailable (`offer_paused`) when the offer is lost (its rebuild keeps
        every order's key). `claim.held` must be False."""
        ...

    async def knows_claim(self, offer_id: str, idempotency_key: str) -> bool:
        """Whether a claim with this key reserved units of the offer (released since or not),
        changing nothing; False too when the store does not hold the offer."""
        ...

    async def remaining(self, offer_id: str) -> int:
        """Units left; Unavailable (code `offer_paused`) while the offer is lost."""
        ...

    async def figure(self, offer_id: str) -> StockFigure:
        """Units left and the stock's version, read together; as `remaining` when lost."""
        ...

    async def pending_without_order(
        self, offer_id: str, older_than: datetime
    ) -> list[PendingReservation]:
        """Live reservations last claimed (made, or sent again) before `older_than` that no order
        was attached to, oldest first, at most `PENDING_BATCH`: their claimer may have died
        between reserving and writing the order."""
        ...

    async def stop(self, offer_id: str, *, sold_out: bool = False) -> int | None:
        """Refuse further claims (`not_active`), and tell how many units the offer has taken
        (reserved or sold, not given back) at that moment, or its whole quantity once stopped
        as sold out (`sold_out`, for an offer that ended so: marked as `stop_if_sold_out`
        marks it, whatever the stock says, which may be one rebuilt meanwhile from orders that
        gave units back): no more can be taken once stopped
        (a rebuild keeps it stopped, see `rebuild`). None when the store does not hold the
        offer; the rebuild then takes `stopped` from the stored offer. None too, stopped all
        the same, for a rebuilt stock not yet confirmed, which may be outdated. The first stop
        raises the stock's version: the figure told with the end is the offer's last word, and
        told again (an end finished twice) it is dropped as a repeat."""
        ...

    async def stop_if_sold_out(self, offer_id: str) -> bool:
        """Stop the offer as sold out if it has nothing left, in one step with that check, and
        tell whether it is stopped so (True again once it is). False when a unit has come back
        since the caller found none (a cancel, the reaper): the offer goes on. From then on its
        stock stays at 0: units given back go to the product, not to the offer, and claims
        keep hearing `not_active` with 0 left, which is "sold out". `OfferPaused` when the
        store has lost the offer."""
        ...

    async def is_ready(self, offer_id: str) -> bool:
        """Whether the store holds the offer (False after it was lost, or before it opened)."""
        ...

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
        """Restore a lost offer from its orders, atomically: remaining = quantity minus the
        units of the held claims (0 for an offer that ended `sold_out`, which implies
        `stopped`: see `stop_if_sold_out`), per-buyer counts from them, every key kept. False
        (and nothing changes) if the store already holds the offer, so racing rebuilders cannot
        undo claims made after the first one finished. Not `stopped`, it is restored
        unconfirmed, under a token of its own (`unconfirmed`): new claims answer `paused` until
        `confirm_open` with that token, since the offer may have ended after the caller read it,
        and its end's stop found nothing to stop. The restored stock has a build of its own
        (see ClaimResult), above `after_build` (the last stock checked's: the store's clock may
        be behind the one that built it)."""
        ...

    async def unconfirmed(self, offer_id: str) -> UnconfirmedStock | None:
        """The offer's stock if a rebuild left it unconfirmed (its token, the orders it was
        rebuilt from, its build, those it holds), else None."""
        ...

    async def drop_unconfirmed(self, offer_id: str, token: str) -> None:
        """Forget the offer's stock if it is still unconfirmed under `token`: rebuilt from a
        read older than orders written since, it is to be rebuilt again. Nothing otherwise."""
        ...

    async def confirm_open(self, offer_id: str, token: str) -> None:
        """Let claims in to the stock a rebuild left unconfirmed under `token`: the caller read
        that token, then the offer still running (an end recorded after that read stops the
        stock it finds). Nothing if the stock is another rebuild's, confirmed, or lost."""
        ...

    async def snapshot(self, offer_id: str) -> StockSnapshot | None:
        """Everything the store holds for the offer (figures, checks), None while lost."""
        ...
