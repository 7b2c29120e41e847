"""RedisChecks: the start-up checks of the stock's Redis, run again while the server runs, on a
check and a clock of the test's own (the real checks on a real Redis:
tests/integration/test_redis_checks.py)."""

from __future__ import annotations

import logging

import pytest

from server.adapters.redis_access import RECHECK_SECONDS, RedisChecks, RedisNotAllowed
from server.domain.errors import Unavailable

EVICTS = "Redis evicts keys when full (maxmemory-policy allkeys-lru)"


class FakeRedis:
    """What the checks find: fine, refusing (a reason), or away; and how often they asked."""

    def __init__(self) -> None:
        self.refusal: str | None = None
        self.away = False
        self.asked = 0

    async def check(self) -> None:
        self.asked += 1
        if self.away:
            raise Unavailable("live data is unreachable, try again")
        if self.refusal is not None:
            raise RedisNotAllowed(self.refusal)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def checks(redis: FakeRedis, clock: Clock) -> RedisChecks:
    return RedisChecks(redis.check, clock=clock)


async def test_passed_at_start_up_they_run_again_once_a_cadence(
    checks: RedisChecks, redis: FakeRedis, clock: Clock
) -> None:
    await checks.at_start_up()
    assert (checks.status, redis.asked) == ("ok", 1)
    clock.now += RECHECK_SECONDS - 1
    await checks.run_if_due()
    assert redis.asked == 1
    clock.now += 1
    await checks.run_if_due()
    assert redis.asked == 2


async def test_a_refusal_at_start_up_refuses_the_start_up(
    checks: RedisChecks, redis: FakeRedis
) -> None:
    redis.refusal = EVICTS
    with pytest.raises(RedisNotAllowed, match=r"maxmemory-policy allkeys-lru"):
        await checks.at_start_up()


async def test_skipped_at_start_up_they_run_every_round_until_they_pass(
    checks: RedisChecks, redis: FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.away = True
    with caplog.at_level(logging.WARNING, logger="liveshop.redis"):
        await checks.at_start_up()  # no refusal: Redis may be back in a moment
    assert [r.getMessage() for r in caplog.records] == ["redis_check_skipped"]
    assert checks.status == "unchecked"
    with pytest.raises(Unavailable):
        await checks.run_if_due()
    assert (checks.status, checks.refusal) == ("unchecked", None)  # away is not refused
    redis.away = False
    redis.refusal = EVICTS
    await checks.run_if_due()  # no clock moved: due until they pass
    assert checks.status == f"refused: {EVICTS}"
    redis.refusal = None
    await checks.run_if_due()
    assert checks.status == "ok"
    assert redis.asked == 4


async def test_a_refusal_is_logged_once_and_clears_when_fixed(
    checks: RedisChecks, redis: FakeRedis, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    await checks.at_start_up()
    redis.refusal = EVICTS
    clock.now += RECHECK_SECONDS
    with caplog.at_level(logging.INFO, logger="liveshop.redis"):
        await checks.run_if_due()
        assert (checks.status, checks.refusal) == (f"refused: {EVICTS}", EVICTS)
        await checks.run_if_due()  # refused: checked every round, told once
        await checks.run_if_due()
        assert redis.asked == 4
        redis.refusal = None
        await checks.run_if_due()
    assert checks.status == "ok"
    logged = [(r.levelno, r.getMessage(), getattr(r, "detail", None)) for r in caplog.records]
    assert logged == [
        (logging.ERROR, "redis_refused", EVICTS),
        (logging.WARNING, "redis_refusal_cleared", None),
    ]


async def test_a_redis_away_keeps_the_last_verdict(
    checks: RedisChecks, redis: FakeRedis, clock: Clock
) -> None:
    await checks.at_start_up()
    redis.away = True
    clock.now += RECHECK_SECONDS
    with pytest.raises(Unavailable):
        await checks.run()
    assert checks.status == "ok"
    redis.away = False
    redis.refusal = EVICTS
    await checks.run()
    redis.away = True
    with pytest.raises(Unavailable):
        await checks.run()
    assert checks.refusal == EVICTS  # still refused: nothing learnt since
