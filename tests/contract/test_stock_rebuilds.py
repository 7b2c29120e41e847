"""The stock reservation contract, on memory and a real Redis: an offer the store lost is
rebuilt from its orders, and waits for its rebuilder's confirmation before it takes a new
claim; a stop counts what the offer had taken; a sold-out stop happens only while it is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import pytest
import redis

from server.adapters.redis_reservations import RedisStockReservations
from server.domain.errors import OfferPaused, Unavailable
from server.domain.offers import AttachOutcome, RecoveredClaim, StockFigure, UnconfirmedStock
from tests.contract.stock_backends import END, NOW, T0, Backend, R, open_offer, rebuild_offer
from tests.servers import RedisServer


async def test_a_lost_offer_pauses_until_rebuilt_from_its_orders(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=10, limit=3)
    for key, buyer, quantity in [("k1", "alice", 3), ("k2", "bob", 2), ("k3", "bob", 1)]:
        await stock.claim("of1", buyer, quantity, key, NOW)
    await stock.claim("of1", "carol", 1, "k4", NOW)  # its claimer dies before the order
    await stock.attach_order("of1", "k1", "ord1")
    await stock.attach_order("of1", "k2", "ord2")
    await stock.attach_order("of1", "k3", "ord3")
    await stock.release("of1", "k3")  # order 3 was cancelled

    await backend.lose_everything()
    assert not await stock.is_ready("of1")
    for buyer, key in [("dave", "k9"), ("alice", "k1")]:
        paused = await stock.claim("of1", buyer, 1, key, NOW)
        assert (paused.outcome, paused.remaining) == (R.PAUSED, None)
    with pytest.raises(Unavailable) as raised:
        await stock.remaining("of1")
    assert raised.value.code == "offer_paused"
    assert await stock.snapshot("of1") is None
    assert await stock.stop("of1") is None
    with pytest.raises(Unavailable) as raised:  # not "nothing to release": nothing is known
        await stock.release("of1", "k1")
    assert raised.value.code == "offer_paused"

    surviving = [
        RecoveredClaim("k1", "alice", 3, "ord1", held=True, reservation_id="rsv_a"),
        RecoveredClaim("k2", "bob", 2, "ord2", held=True),
        RecoveredClaim("k3", "bob", 1, "ord3", held=False),
    ]

    def rebuild() -> Awaitable[bool]:
        return rebuild_offer(stock, quantity=10, limit=3, claims=surviving)

    # Racing rebuilders: one wins, the others change nothing.
    results = await asyncio.gather(*(rebuild() for _ in range(5)))
    assert results.count(True) == 1
    assert await stock.is_ready("of1")
    assert await stock.remaining("of1") == 10 - 3 - 2
    snapshot = await stock.snapshot("of1")
    assert snapshot is not None
    assert snapshot.held_by_buyer == {"alice": 3, "bob": 2}
    assert (snapshot.starts_at, snapshot.ends_at, snapshot.stopped) == (T0, END, False)

    retry = await stock.claim("of1", "alice", 3, "k1", NOW)
    assert (retry.outcome, retry.reservation_id, retry.order_id) == (R.DUPLICATE, "rsv_a", "ord1")
    cancelled = await stock.claim("of1", "bob", 1, "k3", NOW)
    assert (cancelled.outcome, cancelled.released) == (R.DUPLICATE, True)
    # New claims wait until the rebuilder has read the offer again, still running.
    waiting = await stock.claim("of1", "alice", 1, "k5", NOW)
    assert (waiting.outcome, waiting.remaining) == (R.PAUSED, None)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    assert unconfirmed.orders_read == 3  # one recovered claim an order
    token = unconfirmed.token
    await stock.drop_unconfirmed("of1", f"{token}-another-rebuilds")  # not this stock
    await stock.confirm_open("of1", f"{token}-another-rebuilds")
    assert (await stock.claim("of1", "alice", 1, "k5", NOW)).outcome is R.PAUSED
    await stock.confirm_open("of1", token)
    await stock.confirm_open("of1", token)  # once is enough
    assert await stock.unconfirmed("of1") is None
    assert (await stock.claim("of1", "alice", 1, "k5", NOW)).outcome is R.LIMIT_REACHED
    assert (await stock.claim("of1", "bob", 1, "k6", NOW)).outcome is R.RESERVED
    # Carol's reservation died with the data: her order, if it ever comes, holds nothing.
    assert await stock.attach_order("of1", "k4", "ord4") is AttachOutcome.UNKNOWN
    assert await stock.release("of1", "k2")
    assert await stock.remaining("of1") == 6


async def test_a_stopped_offer_is_rebuilt_stopped(backend: Backend) -> None:
    stock = backend.stock
    await backend.lose_everything()
    assert await rebuild_offer(stock, quantity=5, limit=1, stopped=True)
    assert (await stock.claim("of1", "alice", 1, "k1", NOW)).outcome is R.NOT_ACTIVE
    assert await stock.remaining("of1") == 5
    assert await stock.unconfirmed("of1") is None  # nothing for a rebuilder to confirm


async def test_an_offer_stopped_before_its_rebuild_was_confirmed_stays_stopped(
    backend: Backend,
) -> None:
    """The rebuilder read the offer running; it ended before the rebuilder read it again, and
    the end's stop found the rebuilt stock."""
    stock = backend.stock
    await backend.lose_everything()
    await stock.confirm_open("of1", "a-token")  # lost: nothing to let claims in to
    assert not await stock.is_ready("of1")
    assert await stock.unconfirmed("of1") is None
    claims = [RecoveredClaim("k1", "alice", 2, "ord1", held=True)]
    assert await rebuild_offer(stock, quantity=5, limit=2, claims=claims)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    token = unconfirmed.token
    # Stopped, but what it counts taken is not told until the stock is checked: it may be
    # outdated (a rebuilder that paused), and the end would book too little for its orders.
    assert await stock.stop("of1") is None
    assert await stock.attach_order("of1", "k1", "ord1") is AttachOutcome.PAUSED
    stopped = await stock.claim("of1", "bob", 1, "k2", NOW)  # the end, not "wait"
    assert (stopped.outcome, stopped.remaining) == (R.NOT_ACTIVE, 3)
    await stock.confirm_open("of1", token)  # the rebuilder's, after it read the offer running
    assert (await stock.claim("of1", "bob", 1, "k2", NOW)).outcome is R.NOT_ACTIVE
    assert await stock.stop("of1") == 2
    assert await stock.attach_order("of1", "k1", "ord1") is AttachOutcome.ATTACHED


async def test_rebuilds_leave_each_their_own_token(backend: Backend) -> None:
    stock = backend.stock
    tokens, builds = [], []
    for _ in range(2):
        await backend.lose_everything()
        assert await rebuild_offer(stock, quantity=5, limit=2)
        unconfirmed = await stock.unconfirmed("of1")
        assert unconfirmed is not None
        tokens.append(unconfirmed.token)
        builds.append(unconfirmed.build)
    assert tokens[0] != tokens[1]
    assert builds[0] < builds[1]  # the later stock's build is the higher
    await stock.confirm_open("of1", tokens[0])  # the first rebuild's, landing late
    assert (await stock.claim("of1", "bob", 1, "k2", NOW)).outcome is R.PAUSED
    await stock.drop_unconfirmed("of1", tokens[0])  # nor may it drop the second's
    assert await stock.unconfirmed("of1") == UnconfirmedStock(tokens[1], 0, builds[1], frozenset())


async def test_claims_name_the_stock_they_hold_units_of(backend: Backend) -> None:
    """Its build: the opened stock's, then the rebuilt one's, which a retry also hears."""
    stock = backend.stock
    await open_offer(stock, quantity=5, limit=2)
    opened = (await stock.claim("of1", "alice", 1, "k1", NOW)).stock_build
    assert opened is not None
    assert (await stock.claim("of1", "alice", 1, "k1", NOW)).stock_build == opened
    await backend.lose_everything()
    assert await rebuild_offer(stock, quantity=5, limit=2)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    assert unconfirmed.build > opened
    await stock.confirm_open("of1", unconfirmed.token)
    for _ in range(2):  # reserved, then sent again
        claimed = await stock.claim("of1", "bob", 1, "k2", NOW)
        assert claimed.stock_build == unconfirmed.build
    refused = await stock.claim("of1", "bob", 2, "k3", NOW)  # over bob's limit
    assert (refused.outcome, refused.stock_build) == (R.LIMIT_REACHED, None)


async def test_a_rebuilt_stock_s_build_is_above_the_last_one_checked(backend: Backend) -> None:
    """Whatever the store's clock: after a failover it may be behind the one that built it."""
    stock = backend.stock
    ahead = 4_000_000_000_000_000  # microseconds: the year 2096
    await backend.lose_everything()
    assert await rebuild_offer(stock, quantity=5, limit=2, after_build=ahead)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    # Above every version the lost stock reached too: a stock never changes 2^32 times.
    assert unconfirmed.build == ahead + 2**32
    await stock.confirm_open("of1", unconfirmed.token)
    assert (await stock.claim("of1", "bob", 1, "k1", NOW)).stock_build == ahead + 2**32
    assert (await stock.figure("of1")).version == ahead + 2**32 + 1  # its versions follow
    await backend.lose_everything()
    before = time.time_ns() // 1000
    assert await rebuild_offer(stock, quantity=5, limit=2, after_build=before - 10**6)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    assert before <= unconfirmed.build <= time.time_ns() // 1000  # the clock, when ahead


async def test_an_unconfirmed_stock_found_outdated_is_dropped_whole(backend: Backend) -> None:
    """Rebuilt from a read that missed orders written since: its rebuild starts again from
    nothing, as after a loss, and claims wait meanwhile."""
    stock = backend.stock
    await backend.lose_everything()
    claims = [
        RecoveredClaim("k1", "alice", 2, "ord1", held=True),
        RecoveredClaim("k2", "bob", 1, "ord2", held=False),
    ]
    assert await rebuild_offer(stock, quantity=5, limit=2, claims=claims)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    assert unconfirmed.orders_read == 2
    assert unconfirmed.held_orders == {"ord1"}  # not ord2, which holds nothing
    await stock.drop_unconfirmed("of1", unconfirmed.token)
    assert not await stock.is_ready("of1")
    assert await stock.snapshot("of1") is None
    assert (await stock.claim("of1", "carol", 1, "k3", NOW)).outcome is R.PAUSED
    assert not await stock.knows_claim("of1", "k1")
    assert await rebuild_offer(stock, quantity=5, limit=2, claims=claims[:1])  # written again
    assert await stock.unconfirmed("of1") is not None


async def test_a_stop_never_counts_fewer_than_no_units_taken(backend: Backend) -> None:
    """Rebuilt from orders that held more than the quantity (a bug elsewhere), the stock
    reads 0; an order given back then lifts it above what the others hold."""
    stock = backend.stock
    await backend.lose_everything()
    claims = [
        RecoveredClaim("k1", "alice", 2, "ord1", held=True),
        RecoveredClaim("k2", "bob", 2, "ord2", held=True),
    ]
    assert await rebuild_offer(stock, quantity=3, limit=2, stopped=True, claims=claims)
    assert await stock.release("of1", "k1")
    assert await stock.remaining("of1") == 2
    assert await stock.stop("of1") == 1
    assert await stock.release("of1", "k2")
    assert await stock.stop("of1") == 0  # 3 - 4 would be -1


async def test_a_stock_is_stopped_as_sold_out_only_while_it_has_nothing_left(
    backend: Backend,
) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=2, limit=1)
    await stock.claim("of1", "alice", 1, "k1", NOW)
    assert not await stock.stop_if_sold_out("of1")  # one left: it goes on
    assert (await stock.claim("of1", "bob", 1, "k2", NOW)).outcome is R.RESERVED
    assert await stock.release("of1", "k1")  # given back after the last unit went
    assert not await stock.stop_if_sold_out("of1")  # so not sold out any more
    assert (await stock.claim("of1", "carol", 1, "k3", NOW)).outcome is R.RESERVED
    version = (await stock.figure("of1")).version
    assert version is not None
    assert await stock.stop_if_sold_out("of1")
    assert await stock.stop_if_sold_out("of1")  # asked again: it is
    assert (await stock.figure("of1")).version == version + 1  # raised once
    # Units given back from now on go to the product: the offer stays sold out.
    assert await stock.release("of1", "k2")
    assert await stock.figure("of1") == StockFigure(0, version + 1)
    late = await stock.claim("of1", "dave", 1, "k4", NOW)
    assert (late.outcome, late.remaining) == (R.NOT_ACTIVE, 0)
    assert await stock.stop("of1") == 2  # the end's stop counts it sold out, and keeps it so
    assert await stock.stop_if_sold_out("of1")
    snapshot = await stock.snapshot("of1")
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.stopped) == (0, True)


async def test_a_stopped_or_lost_stock_is_not_stopped_as_sold_out(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=1, limit=1)
    await stock.claim("of1", "alice", 1, "k1", NOW)
    await stock.stop("of1")  # the host stopped it first
    assert not await stock.stop_if_sold_out("of1")
    assert await stock.release("of1", "k1")
    assert await stock.remaining("of1") == 1  # a stop's stock takes units back, as before
    await backend.lose_everything()
    with pytest.raises(OfferPaused):
        await stock.stop_if_sold_out("of1")


async def test_a_stopped_stock_marked_sold_out_takes_a_new_version(backend: Backend) -> None:
    """tell_sold_out relies on it: its 0 must be newer than any figure heard of the stopped
    stock, or the room's stream drops it as no newer."""
    stock = backend.stock
    await open_offer(stock, quantity=2, limit=2)
    await stock.claim("of1", "alice", 1, "k1", NOW)
    await stock.stop("of1")
    stopped = await stock.figure("of1")
    assert stopped.remaining == 1
    assert stopped.version is not None
    await stock.stop("of1", sold_out=True)
    assert await stock.figure("of1") == StockFigure(0, stopped.version + 1)


async def test_a_sold_out_end_marks_even_a_stock_rebuilt_meanwhile(backend: Backend) -> None:
    """Lost after the seller's sold-out stop, the stock was rebuilt from orders one of which
    gave its unit back meanwhile: the end, recorded sold out, stops it so all the same."""
    stock = backend.stock
    await backend.lose_everything()
    claims = [
        RecoveredClaim("k1", "alice", 1, "ord1", held=True),
        RecoveredClaim("k2", "bob", 1, "ord2", held=False),
    ]
    assert await rebuild_offer(stock, quantity=2, limit=1, claims=claims)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    await stock.confirm_open("of1", unconfirmed.token)  # checked against the orders
    version = (await stock.figure("of1")).version
    assert version is not None
    assert await stock.stop("of1", sold_out=True) == 2
    assert await stock.stop("of1", sold_out=True) == 2  # again: the same, no new version
    assert await stock.figure("of1") == StockFigure(0, version + 1)
    assert await stock.stop_if_sold_out("of1")
    assert await stock.release("of1", "k1")
    assert await stock.remaining("of1") == 0
    late = await stock.claim("of1", "carol", 1, "k3", NOW)
    assert (late.outcome, late.remaining) == (R.NOT_ACTIVE, 0)


async def test_an_offer_that_ended_sold_out_is_rebuilt_sold_out(backend: Backend) -> None:
    stock = backend.stock
    await backend.lose_everything()
    claims = [
        RecoveredClaim("k1", "alice", 1, "ord1", held=True),
        RecoveredClaim("k2", "bob", 1, "ord2", held=False),  # cancelled after the end
    ]
    assert await rebuild_offer(stock, quantity=2, limit=1, claims=claims, sold_out=True)
    assert await stock.unconfirmed("of1") is None
    late = await stock.claim("of1", "carol", 1, "k3", NOW)
    assert (late.outcome, late.remaining) == (R.NOT_ACTIVE, 0)
    assert await stock.stop_if_sold_out("of1")


async def test_a_redis_restart_pauses_claims_until_the_rebuild(
    redis_server: RedisServer,
) -> None:
    stock = RedisStockReservations(redis_server.url)
    try:
        await open_offer(stock, quantity=50, limit=5)
        results = await asyncio.gather(
            *(stock.claim("of1", f"b{i % 7}", 1 + i % 2, f"k{i}", NOW) for i in range(30))
        )
        reserved = {
            f"k{i}": (f"b{i % 7}", r.quantity)
            for i, r in enumerate(results)
            if r.outcome is R.RESERVED
        }
        # Orders were written for all but the last three reservations.
        written = dict(list(reserved.items())[:-3])
        for key in written:
            assert await stock.attach_order("of1", key, f"ord-{key}") is AttachOutcome.ATTACHED

        await asyncio.to_thread(redis_server.restart)
        # The pooled connections are dead; the retry policy reconnects instead of failing.
        paused = await stock.claim("of1", "newcomer", 1, "after", NOW)
        assert paused.outcome is R.PAUSED
        assert not await stock.is_ready("of1")

        claims = [
            RecoveredClaim(key, buyer, quantity, f"ord-{key}", held=True)
            for key, (buyer, quantity) in written.items()
        ]
        assert await rebuild_offer(stock, quantity=50, limit=5, claims=claims)
        held = sum(quantity for _, quantity in written.values())
        assert await stock.remaining("of1") == 50 - held
        unconfirmed = await stock.unconfirmed("of1")
        assert unconfirmed is not None
        assert unconfirmed.orders_read == len(claims)
        await stock.confirm_open("of1", unconfirmed.token)
        assert (await stock.claim("of1", "newcomer", 1, "after", NOW)).remaining == 49 - held
    finally:
        await stock.close()


async def test_every_stock_change_raises_the_version_and_a_rebuild_starts_above_it(
    backend: Backend,
) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=5, limit=2)
    opened = await stock.figure("of1")
    v = opened.version
    assert opened.remaining == 5
    assert v is not None
    reserved = await stock.claim("of1", "alice", 2, "k1", NOW)
    assert reserved.figure() == StockFigure(3, v + 1)
    # Asking changes nothing: a retry and a refusal leave the version where it was.
    retry = await stock.claim("of1", "alice", 2, "k1", NOW)
    assert retry.figure() == StockFigure(3, v + 1)
    assert (await stock.claim("of1", "alice", 1, "k2", NOW)).outcome is R.LIMIT_REACHED
    assert (await stock.figure("of1")).version == v + 1
    assert await stock.release("of1", "k1")
    assert await stock.figure("of1") == StockFigure(5, v + 2)
    assert not await stock.release("of1", "k1")
    assert (await stock.figure("of1")).version == v + 2
    await stock.stop("of1")  # the end's figure comes after every one before it
    assert await stock.figure("of1") == StockFigure(5, v + 3)
    await stock.stop("of1")  # an end finished again: its figure is the same one, a repeat
    assert await stock.figure("of1") == StockFigure(5, v + 3)

    await backend.lose_everything()
    with pytest.raises(Unavailable) as raised:
        await stock.figure("of1")
    assert raised.value.code == "offer_paused"
    assert await rebuild_offer(stock, quantity=5, limit=2, stopped=True)
    rebuilt = await stock.figure("of1")
    assert rebuilt.remaining == 5
    assert rebuilt.version is not None
    assert rebuilt.version > v + 3


async def test_only_a_rebuild_that_writes_the_stock_reports_it_oversold(
    clean_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Claims holding more units than the offer has are a caller's bug (stock_rebuilds.py
    # counts no more): reported, but only by a rebuild that writes the stock. Finding the
    # stock rebuilt, it writes nothing, and nothing is oversold.
    stock = RedisStockReservations(clean_redis)
    three = [RecoveredClaim(f"k{n}", f"b{n}", 1, f"ord{n}", held=True) for n in range(3)]
    try:
        assert await rebuild_offer(stock, quantity=3, limit=1, claims=three)
        assert not await rebuild_offer(stock, quantity=2, limit=1, claims=three)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        with redis.Redis.from_url(clean_redis) as admin:
            admin.flushall()
        assert await rebuild_offer(stock, quantity=2, limit=1, claims=three)  # oversold
        (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert error.getMessage() == "reservations_rebuild_oversold"
    finally:
        await stock.close()


async def test_an_offer_another_run_of_redis_wrote_is_rebuilt_as_a_lost_one(
    clean_redis: str,
) -> None:
    # What a restart from an older snapshot, or a failover to a replica behind, leaves: the
    # offer as another run of Redis wrote it, older than its orders.
    stock = RedisStockReservations(clean_redis)
    admin = redis.Redis.from_url(clean_redis)
    try:
        await open_offer(stock, quantity=5, limit=1)
        assert (await stock.claim("of1", "alice", 1, "k1", NOW)).outcome is R.RESERVED
        state_key = "liveshop:{offer:of1}:state"
        admin.hset(state_key, "run", "0" * 40)  # as another run of Redis wrote it
        assert (await stock.claim("of1", "bob", 1, "k2", NOW)).outcome is R.PAUSED
        assert not await stock.is_ready("of1")
        assert await stock.stop("of1") is None
        claims = [RecoveredClaim("k1", "alice", 1, "ord1", held=True)]
        assert await rebuild_offer(stock, quantity=5, limit=1, claims=claims)
        assert await stock.is_ready("of1")  # this run's now: kept
        assert await stock.remaining("of1") == 4
        assert await stock.unconfirmed("of1") is not None
        admin.hset(state_key, "run", "f" * 40)
        assert await stock.unconfirmed("of1") is None  # its notes are not this stock's
        assert not await stock.is_ready("of1")  # a read notices as well
        # A stock that notes no run (opened by a version before) is taken as this run's.
        assert await rebuild_offer(stock, quantity=5, limit=1, claims=claims)
        admin.hdel(state_key, "run")
        assert await stock.is_ready("of1")
        assert admin.hget(state_key, "run") not in (None, b"f" * 40)
    finally:
        admin.close()
        await stock.close()
