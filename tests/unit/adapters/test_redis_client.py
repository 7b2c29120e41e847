"""Liveshop's Redis clients pack commands with hiredis, and the bytes must be exactly redis-py's."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from server.adapters.redis_client import HiredisPacking, redis_client


class Priority(enum.IntEnum):  # an int subclass: hiredis refuses it, redis-py sends its repr
    HIGH = 3


COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", 4, "a", "b", "c", "d"),
    ("EVALSHA", "sha", 1, "k", *[f"buyer-{i}" for i in range(200)], *range(200)),
    ("PUBLISH", "liveshop:user:ü", '{"type":"order.updated","order":{"title":"丝巾 🧣"}}'),
    ("SET", "k", ""),
    ("SET", "k", b"\x00\xff raw"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),
    ("SET", "k", 10**20),
    ("SET", "k", -7),
    ("SET", "k", 0.1),
    ("SET", "k", -1.5e-9),
    ("CONFIG GET", "maxmemory"),  # a command of two words goes as two arguments
    (b"CLIENT SETNAME", "liveshop"),
    ("SET", "k", "x" * 100_000),  # past redis-py's buffer cutoff
    ("SET", "k", Priority.HIGH),
]


def _python_packed(*args: Any) -> bytes:
    return b"".join(bytes(part) for part in Connection().pack_command(*args))


def _hiredis_packed(*args: Any) -> bytes:
    connection_class = redis_client(
        "redis://127.0.0.1:6379/0", max_connections=1
    ).connection_pool.connection_class
    assert issubclass(connection_class, HiredisPacking)
    return b"".join(connection_class().pack_command(*args))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packs_byte_for_byte_as_redis_py(command: tuple[Any, ...]) -> None:
    assert _hiredis_packed(*command) == _python_packed(*command)


@pytest.mark.parametrize("bad", [None, True, object(), ["list"]], ids=repr)
def test_arguments_redis_py_refuses_are_refused_too(bad: object) -> None:
    with pytest.raises(DataError):
        _python_packed("SET", "k", bad)
    with pytest.raises(DataError):
        _hiredis_packed("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_kind_of_connection_packs_with_hiredis(url: str, base: type) -> None:
    pool = redis_client(url, max_connections=2).connection_pool
    assert issubclass(pool.connection_class, HiredisPacking)
    assert issubclass(pool.connection_class, base)


def test_a_client_that_encodes_otherwise_keeps_redis_py_s_packer() -> None:
    # hiredis always writes UTF-8.
    pool = redis_client("redis://127.0.0.1:6379/0?encoding=latin-1", max_connections=2)
    assert not issubclass(pool.connection_pool.connection_class, HiredisPacking)
