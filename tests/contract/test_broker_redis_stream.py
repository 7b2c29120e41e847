"""A room's stream in Redis: each event stamped by Redis's clock and judged by it (not the
publisher's nor the reader's), the history's window, and how long the room's keys live."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from channels.broker import KEPT_SECONDS
from channels.broker_redis import RedisBroker
from tests.fakes import Later


@pytest_asyncio.fixture
async def admin(clean_redis: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    yield client
    await client.aclose()


async def history_of(broker: RedisBroker, room_id: str) -> list[str] | None:
    position = await broker.position(room_id)
    return await broker.history(room_id, 0, position.epoch)


@pytest.mark.parametrize("whose", ["the reader's", "the publisher's"])
async def test_history_is_judged_by_redis_clock_not_a_process(
    clean_redis: str, monkeypatch: pytest.MonkeyPatch, whose: str
) -> None:
    """A reader whose clock ran past the window took a moment-old event for gone, as did every
    reader of one stamped by a publisher whose clock ran behind: a reconnecting viewer lost
    the frames it could have had."""
    publisher, reader = RedisBroker(clean_redis), RedisBroker(clean_redis)
    real, past_the_window = time.time, reader.history_seconds + 5
    try:
        if whose == "the publisher's":
            monkeypatch.setattr(time, "time", Later(-past_the_window).time)
        await publisher.publish("r1", {"type": "chat.message", "text": "just now"})
        monkeypatch.setattr(time, "time", real)
        if whose == "the reader's":
            monkeypatch.setattr(time, "time", Later(past_the_window).time)
        missed = await history_of(reader, "r1")
        assert missed is not None
        assert [json.loads(frame)["text"] for frame in missed] == ["just now"]
    finally:
        monkeypatch.setattr(time, "time", real)
        await publisher.close()
        await reader.close()


async def test_the_history_keeps_its_window_and_no_longer(clean_redis: str) -> None:
    kept, short = RedisBroker(clean_redis), RedisBroker(clean_redis, history_seconds=0.5)
    try:
        await kept.publish("r2", {"type": "chat.message", "text": "a"})
        await asyncio.sleep(0.8)  # older than the short window, well within the other
        assert await history_of(kept, "r2") is not None
        assert await history_of(short, "r2") is None
    finally:
        await kept.close()
        await short.close()


async def test_an_event_is_stamped_in_milliseconds_of_redis_clock(
    clean_redis: str, admin: aioredis.Redis
) -> None:
    publisher = RedisBroker(clean_redis)
    try:
        before = await admin.time()
        await publisher.publish("r3", {"type": "chat.message", "text": "a"})
        after = await admin.time()
        entries = await admin.xrange("liveshop:{r3}:history")
        ((_, fields),) = cast(list[tuple[str, dict[str, str]]], entries)
        stamp = fields["t"]
        assert stamp.isdigit(), stamp  # not "1.7e+12"
        assert before[0] * 1000 + before[1] // 1000 <= int(stamp)
        assert int(stamp) <= after[0] * 1000 + after[1] // 1000
    finally:
        await publisher.close()


async def test_a_rooms_keys_live_a_day_and_a_closed_topic_forgets_its_order(
    clean_redis: str, admin: aioredis.Redis
) -> None:
    publisher = RedisBroker(clean_redis)
    try:
        await publisher.publish("r4", {"type": "offer.stock"}, topic="f1", order=5)
        await publisher.publish("r4", {"type": "offer.stock"}, topic="f2", order=7)
        await publisher.publish("r4", {"type": "offer.ended"}, topic="f1", last=True)
        for name in ("stream", "history", "closed", "orders"):
            ttl = await admin.ttl(f"liveshop:{{r4}}:{name}")
            assert KEPT_SECONDS - 5 <= ttl <= KEPT_SECONDS, (name, ttl)
        assert await admin.hgetall("liveshop:{r4}:orders") == {"f2": "7"}
    finally:
        await publisher.close()
