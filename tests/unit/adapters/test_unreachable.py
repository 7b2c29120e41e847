"""A backend that cannot answer becomes Unavailable (a 503); anything else stays what it was."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
)
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.adapters.mongo.stores import translate_errors as mongo_translated
from server.adapters.redis_client import redis_unreachable_is_unavailable
from server.adapters.unreachable import unavailable_when
from server.domain.errors import Unavailable, Unresponsive


def raising(error: Exception) -> Callable[[int], Coroutine[Any, Any, int]]:
    async def call(value: int) -> int:
        raise error

    return call


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("primary stepped down"),
        ServerSelectionTimeoutError("no primary"),
        NetworkTimeout("frozen"),
        ExecutionTimeout("maxTimeMS expired", code=50),  # the server's side of a deadline
        # A clean shutdown, as a write that mongod took as it began to shut down meets it.
        WriteConcernError("operation was interrupted", code=91),
        OperationFailure("interrupted at shutdown", code=11600),
        OperationFailure("not primary", code=10107),
        OperationFailure("stepped down", code=189),
        OperationFailure(
            "labelled so by the server", code=1, details={"errorLabels": ["RetryableWriteError"]}
        ),
    ],
)
async def test_mongodb_away_or_too_slow_is_unavailable(error: Exception) -> None:
    with pytest.raises(Unavailable) as caught:
        await mongo_translated(raising(error))(1)
    assert caught.value.status == 503
    assert caught.value.__cause__ is error  # the logs keep what the driver saw


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("refused"),
        BusyLoadingError("loading the dataset"),
        RedisTimeoutError("no reply"),
        ReadOnlyError("a replica"),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        ResponseError("BUSY Redis is busy running a script"),
        ResponseError("NOREPLICAS Not enough good replicas to write"),
        ClusterDownError("The cluster is down"),
        MasterDownError("Link with MASTER is down"),
        TryAgainError("Multiple keys request during rehashing of slot"),
    ],
)
async def test_redis_away_or_too_slow_is_unavailable(error: Exception) -> None:
    with pytest.raises(Unavailable) as caught:
        await redis_unreachable_is_unavailable(raising(error))(1)
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    ("decorated", "error", "ran_out"),
    [
        (redis_unreachable_is_unavailable, RedisTimeoutError("no reply"), True),
        (redis_unreachable_is_unavailable, RedisConnectionError("refused"), False),
        (redis_unreachable_is_unavailable, OutOfMemoryError("maxmemory"), False),
        (mongo_translated, NetworkTimeout("frozen"), True),
        (mongo_translated, ServerSelectionTimeoutError("no primary"), True),
        (mongo_translated, AutoReconnect("primary stepped down"), False),
    ],
)
async def test_a_backend_that_ran_out_the_deadline_is_unresponsive(
    decorated: Callable[[Callable[[int], Coroutine[Any, Any, int]]], Any],
    error: Exception,
    ran_out: bool,
) -> None:
    # The caller may skip a second call to the same backend, which would wait as long again.
    with pytest.raises(Unavailable) as caught:
        await decorated(raising(error))(1)
    assert isinstance(caught.value, Unresponsive) is ran_out
    assert caught.value.code == "unavailable"


async def _closed_transport_error() -> RuntimeError:
    """What uvloop raises when a connection it already closed is written to."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.transport.abort()
        await asyncio.sleep(0)
        try:
            writer.writelines([b"PING\r\n"])
        except RuntimeError as error:
            return error
        raise AssertionError("uvloop took a write on a closed connection")
    finally:
        server.close()


def test_a_write_on_a_connection_redis_dropped_is_unavailable() -> None:
    # The servers run on uvloop; redis-py does not turn this one into a ConnectionError.
    error = uvloop.run(_closed_transport_error())
    with pytest.raises(Unavailable) as caught:
        uvloop.run(redis_unreachable_is_unavailable(raising(error))(1))
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        DuplicateKeyError("taken", code=11000),
        OperationFailure("a bad query", code=2),
        ResponseError("a script bug"),
        ValueError("a bug of ours"),
        RuntimeError("a bug of ours too"),
    ],
)
async def test_other_errors_stay_what_they_are(error: Exception) -> None:
    for decorated in (mongo_translated, redis_unreachable_is_unavailable):
        with pytest.raises(type(error)) as caught:
            await decorated(raising(error))(1)
        assert caught.value is error


async def test_the_method_keeps_its_result_and_name() -> None:
    @unavailable_when(lambda exc: True, "unused", timed_out=lambda exc: False)
    async def double(value: int) -> int:
        """Twice the value."""
        return 2 * value

    assert await double(21) == 42
    assert (double.__name__, double.__doc__) == ("double", "Twice the value.")


async def test_an_outage_is_logged_once_per_method_not_once_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @redis_unreachable_is_unavailable
    async def claim(value: int) -> int:
        raise RedisConnectionError("refused")

    with caplog.at_level(logging.WARNING, logger="liveshop.backends"):
        for _ in range(100):
            with pytest.raises(Unavailable):
                await claim(1)
    assert [(r.getMessage(), r.call, r.error) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("backend_unreachable", claim.__qualname__, "ConnectionError")
    ]
