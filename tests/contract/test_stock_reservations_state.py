"""A hypothesis state machine against every stock reservation store.

It drives claims (random buyers, quantities and keys, retries with a key already used),
orders attached, releases (cancellations, expiries, the reaper), stops, the clock, data loss
and rebuilds, and holds the store to a plain model: every outcome must match the model's, and
after every step stock is never negative, the units held never exceed the quantity, no buyer
holds more than the limit, remaining == quantity - held, and the stock's version only
rises, and rises whenever the stock moves. No buyer makes more claims than most_claims allows.

Hypothesis runs synchronously, so each example drives the async store through one
`asyncio.Runner` the whole test shares (one Redis client, FLUSHALL between examples).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from server.adapters.memory_reservations import MemoryStockReservations
from server.adapters.redis_reservations import RedisStockReservations
from server.domain.errors import Unavailable
from server.domain.offers import (
    AttachOutcome,
    ClaimOutcome,
    RecoveredClaim,
    StockFigure,
    most_claims,
)
from server.stock_port import StockReservations

T = TypeVar("T")
OFFER = "of-sm"
T0 = datetime(2026, 5, 14, 10, 0, tzinfo=UTC)
END = T0 + timedelta(seconds=60)
MS = timedelta(milliseconds=1)
# Mostly inside the window; the edges to the millisecond.
CLOCK = {
    "before": T0 - MS,
    "start": T0,
    "inside": T0 + timedelta(seconds=20),
    "later": T0 + timedelta(seconds=40),
    "last_ms": END - MS,
    "end": END,
}
BUYERS = [f"buyer{i}" for i in range(5)]


@dataclass
class Harness:
    run: Callable[[Coroutine[Any, Any, Any]], Any]
    make: Callable[[], Coroutine[Any, Any, StockReservations]]
    lose_everything: Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Held:
    buyer: str
    quantity: int
    reservation_id: str
    tried: datetime  # its last try: the reaper waits from it
    order_id: str | None = None
    released: bool = False


@dataclass
class Model:
    quantity: int
    limit: int
    now: datetime = CLOCK["inside"]
    stopped: bool = False
    lost: bool = False
    unconfirmed: bool = False  # rebuilt, not yet confirmed open
    claims: dict[str, Held] = field(default_factory=dict)
    build: int | None = None  # the stock's, once an answer named it
    lost_builds: int = 0  # the highest build of the stocks lost before it

    def saw_build(self, build: int | None) -> None:
        """Each stock names one build, higher than any lost before it."""
        assert build is not None
        if self.build is None:
            assert build > self.lost_builds
            self.build = build
        assert build == self.build

    def held_by_buyer(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for c in self.claims.values():
            if not c.released:
                held[c.buyer] = held.get(c.buyer, 0) + c.quantity
        return held

    @property
    def remaining(self) -> int:
        return self.quantity - sum(self.held_by_buyer().values())

    def expected_claim(self, buyer: str, quantity: int, key: str) -> ClaimOutcome:
        if self.lost:
            return ClaimOutcome.PAUSED
        known = self.claims.get(key)
        if known is not None:
            return ClaimOutcome.DUPLICATE if known.buyer == buyer else ClaimOutcome.KEY_REUSED
        if self.stopped or not T0 <= self.now < END:
            return ClaimOutcome.NOT_ACTIVE
        if self.unconfirmed:
            return ClaimOutcome.PAUSED
        if self.remaining == 0:
            return ClaimOutcome.SOLD_OUT
        if self.held_by_buyer().get(buyer, 0) + quantity > self.limit:
            return ClaimOutcome.LIMIT_REACHED
        # Every claim the model knows was made, or rebuilt from an order: each counts.
        if sum(c.buyer == buyer for c in self.claims.values()) >= most_claims(self.limit):
            return ClaimOutcome.CLAIMS_SPENT
        if self.remaining < quantity:
            return ClaimOutcome.SOLD_OUT
        return ClaimOutcome.RESERVED


class ReservationMachine(RuleBasedStateMachine):
    harness: ClassVar[Harness]

    def __init__(self) -> None:
        super().__init__()
        self.stock: StockReservations = self.harness.run(self.harness.make())
        self.model = Model(quantity=0, limit=0)
        self.orders = 0
        self.minds = 0  # keys of change_mind's claims
        self.last_figure: StockFigure | None = None  # as the last step left it

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        result: T = self.harness.run(coro)
        return result

    def pick_key(self, index: int) -> str | None:
        keys = sorted(self.model.claims)
        return keys[index % len(keys)] if keys else None

    @initialize(quantity=st.integers(1, 12), limit=st.integers(1, 4))
    def open(self, quantity: int, limit: int) -> None:
        self.model = Model(quantity=quantity, limit=min(limit, quantity))
        opened = self.call(
            self.stock.open_offer(
                OFFER,
                quantity=quantity,
                per_user_limit=self.model.limit,
                starts_at=T0,
                ends_at=END,
            )
        )
        assert opened

    @rule(buyer=st.sampled_from(BUYERS), quantity=st.integers(1, 3), key=st.integers(0, 20))
    def claim(self, buyer: str, quantity: int, key: int) -> None:
        self._claim(buyer, quantity, f"key{key}")

    @rule(buyer=st.sampled_from(BUYERS), key=st.integers(0, 20))
    def claim_and_attach(self, buyer: str, key: int) -> None:
        """A claim that gets its order, as most that win do: orders are what a lost stock is
        rebuilt from, and what an unchecked one must not answer of."""
        self._claim(buyer, 1, f"key{key}")
        known = self.model.claims.get(f"key{key}")
        if known is not None and known.order_id is None:
            self.attach_order(sorted(self.model.claims).index(f"key{key}"))

    @rule(buyer=st.sampled_from(BUYERS[:2]), turns=st.integers(1, 8))
    def change_mind(self, buyer: str, turns: int) -> None:
        """A buyer claiming and cancelling, again and again: how claims run out (most_claims)."""
        for _ in range(turns):
            key = f"mind{self.minds}"
            self.minds += 1
            self._claim(buyer, 1, key)
            if key not in self.model.claims:  # refused
                return
            self.release(sorted(self.model.claims).index(key), orphan_only=False, for_order=True)

    @precondition(lambda self: bool(self.model.claims))
    @rule(index=st.integers(0, 1000), quantity=st.integers(1, 3))
    def retry(self, index: int, quantity: int) -> None:
        """The same buyer and key again, as a client retrying after a timeout."""
        key = self.pick_key(index)
        assert key is not None
        self._claim(self.model.claims[key].buyer, quantity, key)

    def _claim(self, buyer: str, quantity: int, key: str) -> None:
        expected = self.model.expected_claim(buyer, quantity, key)
        result = self.call(self.stock.claim(OFFER, buyer, quantity, key, self.model.now))
        assert result.outcome is expected, (result, self.model)
        if expected is ClaimOutcome.PAUSED:
            assert result.remaining is None
            return
        if expected is ClaimOutcome.RESERVED:
            assert result.reservation_id is not None
            taken = {c.reservation_id for c in self.model.claims.values()}
            assert result.reservation_id not in taken  # one reservation per key
            self.model.claims[key] = Held(buyer, quantity, result.reservation_id, self.model.now)
            assert result.remaining == self.model.remaining
            self.model.saw_build(result.stock_build)
        elif expected is ClaimOutcome.DUPLICATE:
            known = self.model.claims[key]
            assert (result.reservation_id, result.order_id) == (
                known.reservation_id,
                known.order_id,
            )
            assert (result.quantity, result.released) == (known.quantity, known.released)
            if known.order_id is None and not known.released and known.quantity == quantity:
                known.tried = self.model.now  # a claimer sending it again is alive
            self.model.saw_build(result.stock_build)
        assert result.remaining == self.model.remaining

    @rule(phase=st.sampled_from(sorted(CLOCK)))
    def tick(self, phase: str) -> None:
        self.model.now = CLOCK[phase]

    @precondition(lambda self: bool(self.model.claims))
    @rule(index=st.integers(0, 1000))
    def attach_order(self, index: int) -> None:
        key = self.pick_key(index)
        assert key is not None
        known = self.model.claims[key]
        order_id = known.order_id or f"ord{self.orders}"
        self.orders += 1
        outcome = self.call(self.stock.attach_order(OFFER, key, order_id))
        if self.model.lost or self.model.unconfirmed:  # an unchecked stock tells nothing
            assert outcome is AttachOutcome.PAUSED
        elif known.released:
            assert outcome is AttachOutcome.RELEASED
        else:
            assert outcome is AttachOutcome.ATTACHED
            known.order_id = order_id

    @precondition(lambda self: bool(self.model.claims))
    @rule(index=st.integers(0, 1000), orphan_only=st.booleans(), for_order=st.booleans())
    def release(self, index: int, orphan_only: bool, for_order: bool) -> None:
        """A cancellation or expiry (any release, naming the order or not), or the reaper
        (orphans only)."""
        key = self.pick_key(index)
        assert key is not None
        known = self.model.claims[key]
        order_id = None
        if for_order and not orphan_only:
            order_id = f"ord{self.orders}"
            self.orders += 1
        release = self.stock.release(OFFER, key, orphan_only=orphan_only, for_order=order_id)
        if self.model.lost:  # nothing is known until the offer is rebuilt
            with pytest.raises(Unavailable) as paused:
                self.call(release)
            assert paused.value.code == "offer_paused"
            return
        expected = not (known.released or (orphan_only and known.order_id is not None))
        assert self.call(release) is expected
        if expected:
            known.released = True
            known.order_id = known.order_id or order_id

    @rule()
    def reaper_scan(self) -> None:
        cutoff = self.model.now + MS
        found = self.call(self.stock.pending_without_order(OFFER, cutoff))
        expected = set()
        if not self.model.lost:
            expected = {
                k
                for k, c in self.model.claims.items()
                if c.order_id is None and not c.released and c.tried < cutoff
            }
        assert {p.idempotency_key for p in found} == expected

    @rule()
    def stop(self) -> None:
        taken = self.call(self.stock.stop(OFFER))
        if self.model.lost:
            assert taken is None
        elif self.model.unconfirmed:  # stopped, but an unchecked stock counts nothing
            assert taken is None
            self.model.stopped = True
        else:
            assert taken == self.model.quantity - self.model.remaining
            self.model.stopped = True

    @precondition(lambda self: not self.model.lost)
    @rule()
    def lose_data(self) -> None:
        self.call(self.harness.lose_everything())
        self.model.lost = True
        self.model.unconfirmed = False
        self.model.lost_builds = max(self.model.lost_builds, self.model.build or 0)
        self.model.build = None
        # What survives is what MongoDB holds: the claims that got an order. Released ones
        # survive as cancelled or expired orders.
        self.model.claims = {k: c for k, c in self.model.claims.items() if c.order_id}

    @precondition(lambda self: self.model.lost)
    @rule()
    def rebuild(self) -> None:
        claims = [
            RecoveredClaim(
                key,
                c.buyer,
                c.quantity,
                c.order_id or "",
                held=not c.released,
                reservation_id=c.reservation_id,
            )
            for key, c in self.model.claims.items()
        ]
        rebuilt = self.call(
            self.stock.rebuild(
                OFFER,
                quantity=self.model.quantity,
                per_user_limit=self.model.limit,
                starts_at=T0,
                ends_at=END,
                stopped=self.model.stopped,
                claims=claims,
            )
        )
        assert rebuilt
        self.model.lost = False
        self.model.unconfirmed = not self.model.stopped

    @precondition(lambda self: not self.model.lost)
    @rule()
    def lose_and_rebuild(self) -> None:
        """Both at once: what a stock does before its check (attach, stop, claim) is seldom
        reached otherwise."""
        self.lose_data()
        self.rebuild()

    @rule()
    def confirm_open(self) -> None:
        unconfirmed = self.call(self.stock.unconfirmed(OFFER))
        assert (unconfirmed is not None) is self.model.unconfirmed
        if unconfirmed is not None:
            self.model.saw_build(unconfirmed.build)
            self.call(self.stock.confirm_open(OFFER, unconfirmed.token))
        self.model.unconfirmed = False

    @invariant()
    def stock_adds_up(self) -> None:
        if self.model.quantity == 0:  # before `open`
            return
        snapshot = self.call(self.stock.snapshot(OFFER))
        if self.model.lost:
            assert snapshot is None
            assert not self.call(self.stock.is_ready(OFFER))
            return
        assert snapshot is not None
        held = snapshot.held_by_buyer
        assert snapshot.remaining >= 0
        assert sum(held.values()) <= snapshot.quantity
        assert all(0 < units <= snapshot.per_user_limit for units in held.values())
        assert snapshot.remaining == snapshot.quantity - sum(held.values())
        assert held == self.model.held_by_buyer()
        assert snapshot.remaining == self.model.remaining
        assert snapshot.stopped is self.model.stopped

    @invariant()
    def versions_only_rise(self) -> None:
        """The stock's version never goes back, even past a loss and its rebuild, and it goes
        up whenever the stock moves: figures can be put in order by it."""
        if self.model.quantity == 0 or self.model.lost:
            return
        figure = self.call(self.stock.figure(OFFER))
        assert figure.version is not None
        last = self.last_figure
        if last is not None and last.version is not None:
            assert figure.version >= last.version
            if figure.remaining != last.remaining:
                assert figure.version > last.version
        self.last_figure = figure


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _memory_harness(runner: asyncio.Runner) -> Harness:
    current = MemoryStockReservations()

    async def make() -> StockReservations:
        nonlocal current
        current = MemoryStockReservations()
        return current

    async def lose() -> None:
        current.flush()

    return Harness(runner.run, make, lose)


def _redis_harness(runner: asyncio.Runner, client: aioredis.Redis) -> Harness:
    store = RedisStockReservations(client)

    async def make() -> StockReservations:
        await client.flushall()
        return store

    async def lose() -> None:
        await client.flushall()

    return Harness(runner.run, make, lose)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_reservations_hold_their_invariants(kind: str, request: pytest.FixtureRequest) -> None:
    with asyncio.Runner() as runner:
        client: aioredis.Redis | None = None
        if kind == "redis":
            client = aioredis.Redis.from_url(request.getfixturevalue("clean_redis"))
            harness = _redis_harness(runner, client)
        else:
            harness = _memory_harness(runner)
        machine = type(f"{kind.title()}ReservationMachine", (ReservationMachine,), {})
        assert issubclass(machine, ReservationMachine)
        machine.harness = harness
        try:
            run_state_machine_as_test(machine, settings=SETTINGS)
        finally:
            if client is not None:
                runner.run(client.aclose())
