"""End-to-end fixtures: real `liveshop serve` processes on the suite's real Redis and MongoDB.

`cluster` is two processes sharing one Redis and one MongoDB database, started once for the
whole e2e package (tests use rooms of their own, so they do not see each other). Tests that stop
a process or break Redis start processes of their own.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.e2e import processes
from tests.e2e.api import SECRET
from tests.e2e.processes import LiveshopProcess, clean_env

COUNTER_INTERVAL = "0.2"


def server_env(redis_url: str, mongodb_url: str, database: str, **extra: str) -> dict[str, str]:
    """The environment of one server process; `extra` maps LIVESHOP_* names to values."""
    env = clean_env(
        LIVESHOP_REDIS_URL=redis_url,
        LIVESHOP_MONGODB_URL=mongodb_url,
        LIVESHOP_MONGODB_DATABASE=database,
        LIVESHOP_SECRET=SECRET,
        LIVESHOP_COUNTER_INTERVAL=COUNTER_INTERVAL,
        LIVESHOP_SHUTDOWN_GRACE_SECONDS="5",
        # Tests chat in bursts from few users; the default 5-message burst would refuse them.
        LIVESHOP_CHAT_BURST="200",
        LIVESHOP_CHAT_PER_SECOND="100",
        LIVESHOP_LOG_LEVEL="info",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Cluster:
    a: LiveshopProcess
    b: LiveshopProcess
    redis_url: str
    mongodb_url: str
    database: str

    def env(self, **extra: str) -> dict[str, str]:
        return server_env(self.redis_url, self.mongodb_url, self.database, **extra)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing e2e test shows the logs of the server processes it ran against."""
    report = yield
    if report.failed:
        for title, text in processes.failure_sections():
            report.sections.append((title, text))
    return report


def _drop_database(mongodb_url: str, name: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(mongodb_url)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture(scope="package")
def e2e_database(mongodb_url: str) -> Iterator[str]:
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    yield name
    _drop_database(mongodb_url, name)


@pytest.fixture(scope="package")
def cluster(redis_url: str, mongodb_url: str, e2e_database: str) -> Iterator[Cluster]:
    env = server_env(redis_url, mongodb_url, e2e_database)
    pair = [LiveshopProcess(env, name="A"), LiveshopProcess(env, name="B")]
    with processes.running(pair):
        yield Cluster(pair[0], pair[1], redis_url, mongodb_url, e2e_database)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="liveshop-e2e-") as path:
        yield Path(path)
