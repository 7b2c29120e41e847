"""The start-up check of Liveshop's Redis user asks about every command Liveshop's scripts call:
one added to a script and not to the check would pass the check and fail in production."""

from __future__ import annotations

from channels import broker_redis
from server.adapters import redis_reservation_scripts
from server.adapters.redis_access import CALLS, commands_called


def _scripts() -> list[str]:
    reservations = [v for v in vars(redis_reservation_scripts).values() if isinstance(v, str)]
    broker = [v for v in vars(broker_redis).values() if isinstance(v, str)]
    return [script for script in reservations + broker if "redis.call(" in script]


def test_every_command_a_script_calls_is_checked_at_start_up() -> None:
    called = commands_called(_scripts())
    assert {"TIME", "INFO", "PUBLISH", "HSET"} <= called  # the scripts were read
    assert called - set(CALLS) == set()
