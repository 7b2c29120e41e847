"""The test servers themselves: a Redis restart loses its data and keeps its port."""

from __future__ import annotations

import pytest
import redis

from tests.servers import RedisServer


def test_redis_restart_loses_data_and_keeps_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("room:1:seq", 41)
        redis_server.restart()
        assert redis_server.port == port
        # redis-py reconnects on its own; the restarted server is empty.
        assert client.get("room:1:seq") is None
        assert client.ping()
    finally:
        client.close()


def test_stopped_redis_refuses_connections_until_started(redis_server: RedisServer) -> None:
    redis_server.stop()
    client = redis.Redis.from_url(redis_server.url, socket_connect_timeout=0.5)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert client.ping()
    finally:
        client.close()


def test_clean_redis_is_empty(clean_redis: str) -> None:
    client = redis.Redis.from_url(clean_redis)
    try:
        assert client.dbsize() == 0
        client.set("leftover", 1)  # the next test asking for clean_redis must not see it
    finally:
        client.close()


def test_clean_redis_is_empty_again(clean_redis: str) -> None:
    test_clean_redis_is_empty(clean_redis)
