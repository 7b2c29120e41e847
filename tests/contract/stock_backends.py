"""What the stock reservation contract suites share: fixed times, the backends under test,
and opening or rebuilding an offer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.domain.offers import ClaimOutcome, RecoveredClaim
from server.stock_port import StockReservations

T0 = datetime(2026, 5, 14, 10, 0, tzinfo=UTC)
END = T0 + timedelta(minutes=10)
NOW = T0 + timedelta(minutes=1)
MS = timedelta(milliseconds=1)

R = ClaimOutcome


@dataclass
class Backend:
    stock: StockReservations
    lose_everything: Callable[[], Awaitable[None]]


async def open_offer(
    stock: StockReservations, offer: str = "of1", quantity: int = 10, limit: int = 2
) -> None:
    opened = await stock.open_offer(
        offer, quantity=quantity, per_user_limit=limit, starts_at=T0, ends_at=END
    )
    assert opened


def rebuild_offer(
    stock: StockReservations,
    *,
    quantity: int,
    limit: int,
    stopped: bool = False,
    claims: Sequence[RecoveredClaim] = (),
    sold_out: bool = False,
    after_build: int | None = None,
) -> Awaitable[bool]:
    """Offer `of1`, in the window `open_offer` gives it, rebuilt from these orders' claims."""
    return stock.rebuild(
        "of1",
        quantity=quantity,
        per_user_limit=limit,
        starts_at=T0,
        ends_at=END,
        stopped=stopped,
        claims=claims,
        sold_out=sold_out,
        after_build=after_build,
    )
