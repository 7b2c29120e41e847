"""What Liveshop's Redis user must be allowed, checked at start-up and again while it runs
(`RedisChecks`). Behind ACLs, a user that may
not run one of the commands Liveshop sends (or its scripts call), or touch its keys (`liveshop:*`)
and channels, failed request by request, with 500s and tracebacks, rather than at start-up: the
README's first recipe lacked TIME, PING, MULTI and the channels. The check asks Redis itself, in
a script (`redis.acl_check_cmd`, Redis 7 and Valkey), about each command as Liveshop calls it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from server.adapters.redis_client import redis_unreachable
from server.domain.errors import Unavailable

log = logging.getLogger("liveshop.redis")

# How often the checks run again once they passed. A Redis reconfigured at run time (`CONFIG
# SET maxmemory-policy`, an ACL change) or failed over to a replica set up otherwise is noticed
# within this: eviction bites only once memory is full, rarely within a minute of the change,
# and each run costs one script and one INFO per process, nothing beside a flash sale's claims.
RECHECK_SECONDS = 60.0

# Checked against the user's key and channel patterns: every key and channel is named so (a
# room's, a user's, a process's own channel).
KEY = "liveshop:{access-check}:key"
CHANNEL = "liveshop:room:access-check"
CHANNELS = (CHANNEL, "liveshop:user:access-check", "liveshop:node:access-check")
# What the README asks for (the least a user may have; more is fine).
RECIPE = "~liveshop:* &liveshop:* +@all -@dangerous +info"

# Each command Liveshop sends or its scripts call, with arguments of the shape it uses. A command
# a script calls that is not here fails the unit test that reads the scripts (`commands_called`).
CALLS: dict[str, tuple[str, ...]] = {
    "DEL": (KEY,),
    "EXISTS": (KEY,),
    "EXPIRE": (KEY, "1"),
    "GET": (KEY,),
    "HDEL": (KEY, "f"),
    "HEXISTS": (KEY, "f"),
    "HGET": (KEY, "f"),
    "HGETALL": (KEY,),
    "HINCRBY": (KEY, "f", "1"),
    "HMGET": (KEY, "f"),
    "HSET": (KEY, "f", "v"),
    "HSETNX": (KEY, "f", "v"),
    "HVALS": (KEY,),
    "INFO": ("server",),
    "PEXPIREAT": (KEY, "1"),
    "PUBLISH": (CHANNEL, "m"),
    "SADD": (KEY, "m"),
    "SET": (KEY, "v"),
    "SISMEMBER": (KEY, "m"),
    "TIME": (),
    "XADD": (KEY, "*", "f", "v"),
    "XRANGE": (KEY, "-", "+"),
    "ZADD": (KEY, "1", "m"),
    "ZRANGEBYSCORE": (KEY, "0", "1"),
    "ZREM": (KEY, "m"),
    # Sent by the client only: health checks, pub/sub, a room's history read in a transaction,
    # the scripts themselves (loaded again after a Redis restart).
    "PING": (),
    "SUBSCRIBE": CHANNELS,
    "UNSUBSCRIBE": CHANNELS,
    "MULTI": (),
    "EXEC": (),
    "EVALSHA": ("0" * 40, "1", KEY),
    "SCRIPT": ("LOAD", "return 1"),
}

# Arguments come as: a count, then that many words (a command and its arguments), repeated.
_REFUSED = """
local refused = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local call = {}
  for j = 1, n do call[j] = ARGV[i + j] end
  if not redis.acl_check_cmd(unpack(call)) then table.insert(refused, call[1]) end
  i = i + n + 1
end
return refused
"""

_CALL = re.compile(r"redis\.call\('([A-Z]+)'")


def commands_called(scripts: Iterable[str]) -> set[str]:
    """The commands these Lua scripts call."""
    return {command for script in scripts for command in _CALL.findall(script)}


class RedisNotAllowed(RuntimeError):
    """Redis refuses what Liveshop needs: a configuration to fix, not an outage."""


class RedisNoSuchDatabase(RuntimeError):
    """The URL names a database number the Redis does not have: a setting to fix, which no
    restart of either will mend."""


async def check_user_allowed(redis: Redis) -> None:
    """Raise RedisNotAllowed naming what the user may not do (Redis 7 or Valkey: Liveshop's
    scripts need what they bring)."""
    args: list[str] = []
    for command, arguments in CALLS.items():
        args += [str(1 + len(arguments)), command, *arguments]
    try:
        refused = await redis.eval(_REFUSED, 0, *args)
    except ResponseError as exc:
        if redis_unreachable(exc):  # busy or full: not now, which is no refusal
            raise
        if "DB index" in str(exc):  # the first command on a connection that SELECTs it fails
            raise RedisNoSuchDatabase(
                "LIVESHOP_REDIS_URL names a database this Redis does not have (it has as many"
                " as its `databases` setting says, 16 by default, numbered from 0)"
            ) from exc
        raise RedisNotAllowed(_refusal(f"refused the check of its user ({exc})")) from exc
    if refused:
        names = ", ".join(sorted({str(name) for name in refused}))
        raise RedisNotAllowed(_refusal(f"refuses commands Liveshop sends ({names})"))


def _refusal(what: str) -> str:
    return f"Redis {what}: Liveshop needs Redis 7 or Valkey, its user at least {RECIPE}"


class RedisChecks:
    """The start-up checks of Liveshop's Redis (`check`), run again while the server runs:
    each `run_if_due` (a housekeeping round) until they pass, after a start-up that could not
    run them or a refusal; then every `every` seconds, so that a Redis changed since is noticed.

    A refusal is logged once (`redis_refused`, with the reason), shown on /readyz and refuses
    claims (RedisStockReservations.claim) until a run passes. A Redis that cannot be asked
    (Unavailable) leaves the last verdict as it was: away is not refused, and /readyz says it
    in the broker's entry."""

    def __init__(
        self,
        check: Callable[[], Awaitable[None]],
        *,
        every: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._every = every
        self._clock = clock
        self._passed_at: float | None = None  # None: not passed since start-up or a refusal
        self.refusal: str | None = None
        # One run at a time: a run that read Redis before a fix must not land after one that
        # read it after, and leave a verdict Redis no longer deserves.
        self._one_run = asyncio.Lock()

    @property
    def status(self) -> str:
        """For /readyz: "ok", "refused: <why>", or "unchecked" (no run has passed yet)."""
        if self.refusal is not None:
            return f"refused: {self.refusal}"
        return "unchecked" if self._passed_at is None else "ok"

    async def at_start_up(self) -> None:
        """RedisNotAllowed refuses the start-up; a Redis away is checked once it is back."""
        try:
            await self._check()
        except Unavailable:  # away for now: housekeeping's next rounds check it
            log.warning("redis_check_skipped")
            return
        self._passed_at = self._clock()

    async def run_if_due(self) -> None:
        passed_at = self._passed_at
        if passed_at is None or self._clock() - passed_at >= self._every:
            await self.run()

    async def run(self) -> None:
        """Run the checks now and keep the verdict. Unavailable when Redis cannot be asked."""
        async with self._one_run:
            try:
                await self._check()
            except RedisNotAllowed as exc:
                self._passed_at = None
                if self.refusal != str(exc):  # once, not every round while it lasts
                    log.error("redis_refused", extra={"backend": "redis", "detail": str(exc)})
                self.refusal = str(exc)
                return
            if self.refusal is not None:
                log.warning("redis_refusal_cleared", extra={"backend": "redis"})
            self.refusal = None
            self._passed_at = self._clock()
