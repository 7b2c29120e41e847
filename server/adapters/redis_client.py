"""The one way Liveshop opens a Redis client: bounded, blocking, and reconnecting."""

from __future__ import annotations

import codecs
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    DataError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from server.adapters.unreachable import unavailable_when

REPLY_TIMEOUT_SECONDS = 5.0


# Refusals that mean "not now" rather than "never": Redis running a script past its time limit,
# or a primary without enough replicas for a write (`min-replicas-to-write`). redis-py gives
# them no class of their own.
_NOT_NOW_PREFIXES = ("BUSY ", "NOREPLICAS ")


def redis_unreachable(exc: Exception) -> bool:
    """Whether `exc` means "not now" (Redis away, full, busy), not a refusal or a bug."""
    # ConnectionError covers a refused or dropped connection, a Redis still loading its data
    # and no free pooled connection; a ReadOnlyError, a replica that is not yet the primary.
    # Out of memory (writes refused until keys expire or memory is freed), a cluster that is
    # down or resharding: the command did nothing, and later it may work.
    # A refused password is a ConnectionError too, but a configuration error: not "try again".
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    if closed_transport(exc):
        return True
    if isinstance(exc, OutOfMemoryError | ClusterDownError | TryAgainError):
        return True
    if isinstance(exc, ResponseError) and str(exc).startswith(_NOT_NOW_PREFIXES):
        return True
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError)


def closed_transport(exc: Exception) -> bool:
    """A connection that Redis dropped, written to again: uvloop raises a RuntimeError of its
    own, which redis-py passes on as it is (asyncio's own loop drops the write silently)."""
    return isinstance(exc, RuntimeError) and "handler is closed" in str(exc)


# For the adapters' methods: Redis down, restarting, failing over or frozen is a 503.
redis_unreachable_is_unavailable = unavailable_when(
    redis_unreachable,
    "live data is unreachable, try again",
    timed_out=lambda exc: isinstance(exc, RedisTimeoutError),
)


def redis_client(url: str, *, max_connections: int) -> redis.Redis:
    """A client on a pool of at most `max_connections`.

    Blocking: a burst waits up to 5 s for a free connection instead of failing with
    MaxConnectionsError or opening thousands. The retry policy must be the asyncio Retry
    (redis.retry's is silently ignored here); without one, the first command on each pooled
    connection after a Redis restart fails instead of reconnecting. A retry may replay a command
    whose reply was lost: the reservation scripts turn that into `duplicate` through their
    idempotency keys; a room event could be published twice.

    A reply that takes longer than REPLY_TIMEOUT_SECONDS (redis-py's default, pinned here) is
    not waited for again: Retry's default would also retry timeouts, and a Redis that froze held
    a shopper's claim four times as long (20 s) before "try again".
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=REPLY_TIMEOUT_SECONDS,
        socket_connect_timeout=REPLY_TIMEOUT_SECONDS,
        decode_responses=True,
        health_check_interval=10,
        # Connection errors only (see above).
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=1.0),
            retries=3,
            supported_errors=(RedisConnectionError,),
        ),
        retry_on_error=[RedisConnectionError],
    )
    encoding = str(pool.connection_kwargs.get("encoding", "utf-8"))
    if HIREDIS_AVAILABLE and codecs.lookup(encoding).name == "utf-8":  # hiredis writes UTF-8
        # Whatever class the URL chose (TCP, TLS, unix socket), with the C packer.
        base = pool.connection_class
        pool.connection_class = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
    return redis.Redis.from_pool(pool)


class HiredisPacking(AbstractConnection):
    """Packs commands in C with hiredis, byte for byte as redis-py's Python packer does.

    redis-py's blocking connections pack with hiredis when it is installed; its asyncio ones
    always pack in Python, one argument at a time. A flash sale's batched scripts carry hundreds
    of arguments, and packing them in Python cost about 8 % of a claim's CPU (bench/orderstore.py).
    """

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            packed: list[bytes] = self._serializer.pack(*args)
        except DataError:
            # A type hiredis does not take (an int subclass such as an IntEnum): redis-py's own
            # packer sends it or refuses it, as it would without hiredis.
            return super().pack_command(*args)
        return packed
