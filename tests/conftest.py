"""Shared fixtures: real Redis and MongoDB servers, started lazily on free ports.

A test that asks for a server gets one or fails with the reason; it is never skipped, so a broken
machine cannot make the suite pass silently (in CI, `CI=true`, or anywhere else). Tests that ask
for no server start none.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import pytest_asyncio
import redis
from pymongo import AsyncMongoClient

from server.adapters.mongo.embedded import EmbeddedMongo, EmbeddedMongoError
from tests.servers import RedisServer, ServerStartError

_REDIS_FIXTURES = {"redis_url", "redis_server", "clean_redis"}
_MONGO_FIXTURES = {"mongodb_url", "mongo_database_name"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers they use, so `-m "not mongo"` deselects them."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if used & _MONGO_FIXTURES:
            item.add_marker(pytest.mark.mongo)


def _cannot_start(what: str, exc: Exception) -> NoReturn:
    where = "in CI" if os.environ.get("CI") == "true" else "on this machine"
    pytest.fail(f"Could not start the test {what} {where}: {exc}", pytrace=False)


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a private Redis-protocol server shared by the whole session."""
    server = RedisServer()
    try:
        url = server.start()
    except ServerStartError as exc:
        server.close()
        _cannot_start("Redis server", exc)
    try:
        yield url
    finally:
        server.close()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session Redis URL, emptied (FLUSHALL) before the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh Redis of the test's own, which it may stop, restart or break."""
    server = RedisServer()
    try:
        server.start()
    except ServerStartError as exc:
        server.close()
        _cannot_start("Redis server", exc)
    try:
        yield server
    finally:
        server.close()


# -- MongoDB -------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mongodb_url() -> AsyncIterator[str]:
    """URL of a single-node MongoDB replica set (majority writes, retryable writes), shared by
    the session."""
    # Not tmp_path_factory: pytest keeps old temp dirs around, and a data dir is ~35 MB.
    with tempfile.TemporaryDirectory(prefix="liveshop-mongo-") as data_dir:
        mongo = EmbeddedMongo(Path(data_dir))
        try:
            url = await mongo.start()
        except EmbeddedMongoError as exc:
            _cannot_start("MongoDB", exc)
        try:
            yield url
        finally:
            await mongo.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def mongo_database_name(mongodb_url: str) -> AsyncIterator[str]:
    """A database name of the test's own (dropped afterwards), so tests never see each other."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield name
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_url)
    try:
        await client.drop_database(name)
    finally:
        await client.close()
