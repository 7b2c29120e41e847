"""The one way Liveshop opens a Redis client: bounded, blocking, and reconnecting."""

from __future__ import annotations

import codecs
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE


def redis_client(url: str, *, max_connections: int) -> redis.Redis:
    """A client on a pool of at most `max_connections`.

    Blocking: a burst waits up to 5 s for a free connection instead of failing with
    MaxConnectionsError or opening thousands. The retry policy must be the asyncio Retry
    (redis.retry's is silently ignored here); without one, the first command on each pooled
    connection after a Redis restart fails instead of reconnecting. A retry may replay a command
    whose reply was lost: the reservation scripts turn that into `duplicate` through their
    idempotency keys; a room event could be published twice.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
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
