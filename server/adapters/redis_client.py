"""The one way Liveshop opens a Redis client: bounded, blocking, and reconnecting."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


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
    return redis.Redis.from_pool(pool)
