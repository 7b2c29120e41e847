"""The in-process reservation store forgets an offer when Redis would expire its keys, so that a
single process without Redis keeps only recent offers and their claims' keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.adapters import memory_reservations
from server.adapters.memory_reservations import MemoryStockReservations
from server.domain.offers import STOCK_KEPT_AFTER_END

START = datetime(2026, 11, 29, 12, tzinfo=UTC)


class WallClock:
    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now.timestamp()

    def time_ns(self) -> int:
        return int(self.now.timestamp()) * 1_000_000_000


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock()
    monkeypatch.setattr(memory_reservations, "time", clock)
    return clock


async def open_offer(stock: MemoryStockReservations, offer_id: str, minutes: int) -> None:
    ends = START + timedelta(minutes=minutes)
    await stock.open_offer(offer_id, quantity=5, per_user_limit=1, starts_at=START, ends_at=ends)


async def test_an_offer_is_forgotten_a_day_after_its_end(wall: WallClock) -> None:
    stock = MemoryStockReservations()
    await open_offer(stock, "f_short", minutes=5)
    await open_offer(stock, "f_long", minutes=60)
    await stock.claim("f_short", "leo", 1, "k1", START)
    wall.now = START + timedelta(minutes=5) + STOCK_KEPT_AFTER_END
    await open_offer(stock, "f_next", minutes=5)  # the next launch sweeps
    assert await stock.snapshot("f_short") is None
    assert await stock.snapshot("f_long") is not None  # its day is not over yet
    assert await stock.snapshot("f_next") is not None
