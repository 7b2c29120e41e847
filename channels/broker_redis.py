"""The Redis broker: rooms shared by many server processes.

Each room has, under one hash tag so a cluster keeps them on one shard:
  liveshop:{room}:stream   hash: seq, epoch
  liveshop:{room}:history  stream of frames, entry id = seq, trimmed to about N entries
  liveshop:{room}:counters hash: likes, peak
  liveshop:{room}:viewers  hash: node id -> "count:unix_ms"
  liveshop:{room}:reports  hash: node id -> "number:unix_ms" of its last report taken;
                           "node id/tally" -> "likes counted:unix_ms" (see _COUNTERS)
  liveshop:{room}:closed   set of closed topics (see Broker.publish)
  liveshop:{room}:orders   hash: topic -> the order of its last ordered event
One Lua script assigns the sequence number, appends to history and publishes, so the order of
publication is the order of sequence numbers on every subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from channels.broker import (
    KEPT_SECONDS,
    REPORT_TRACE_SECONDS,
    SPACED_TURNS_KEPT_SECONDS,
    STALE_SECONDS,
    BrokerListener,
    CounterReport,
    Counters,
    StreamPosition,
    encode_body,
    new_epoch,
    room_channel,
    user_channel,
)
from server.adapters.group_commit import GroupCommit
from server.adapters.redis_client import (
    closed_transport,
    redis_client,
    redis_unreachable_is_unavailable,
)

log = logging.getLogger("liveshop.broker")

MAX_CONNECTIONS = 100  # redis-py's default; one is the pub/sub connection, held for good

# Redis's clock, which every script here goes by, in microseconds (exact in Lua's doubles) and
# milliseconds: the processes' clocks may differ, and the times they share must not.
_REDIS_NOW = """
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now_us / 1000)
"""

# KEYS: stream (seq, epoch), history, closed topics, topics' orders. ARGV: [1] the event's JSON,
# [2] the room's channel, [3] history MAXLEN, [4] seconds kept, [5] a new epoch (for a stream
# Redis lost), [6] topic ('' for none), [7] '1' when the event closes its topic, [8] its order
# within the topic ('' for none). Each event is stamped by Redis's clock, as `history` reads it.
_PUBLISH = (
    _REDIS_NOW
    + """
if ARGV[6] ~= '' then
  if redis.call('SISMEMBER', KEYS[3], ARGV[6]) == 1 then return 0 end
  if ARGV[8] ~= '' then
    local before = redis.call('HGET', KEYS[4], ARGV[6])
    if before and tonumber(ARGV[8]) <= tonumber(before) then return 0 end
    redis.call('HSET', KEYS[4], ARGV[6], ARGV[8])
    redis.call('EXPIRE', KEYS[4], ARGV[4])
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local stamp = string.format('%d', now_ms)
local frame = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[1], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'f', frame, 't', stamp)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[2], frame)
if ARGV[7] == '1' then
  redis.call('SADD', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('HDEL', KEYS[4], ARGV[6])
end
return seq
"""
)

# KEYS: counters, viewers, reports. ARGV: [1] node id, [2] tally, [3] report number, [4] likes
# of the tally, [5] of which counted, [6] viewers, [7] stale ms, [8] seconds kept, [9] likes
# kept, [10] peak kept, [11] ms a report's trace is kept.
# `reports` holds "number:ms" for each node and "counted:ms" for each tally, each as of the
# report that last wrote it; one not written for ARGV[11] ms (far longer than any report takes
# to arrive) is forgotten, so that a room that stays live does not pile up one a reopening.
# Times are Redis's, as read_counters reads them: processes whose clocks differ count the same
# viewers (one 10 s ahead would take the others' reports for stale).
_COUNTERS = (
    _REDIS_NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'likes', ARGV[9], 'peak', ARGV[10])
end
local stamp = string.format('%d', now_ms)
local function first_of(field)
  local raw = redis.call('HGET', KEYS[3], field)
  return raw and tonumber(string.match(raw, '^(%d+)'))
end
local tally = ARGV[1] .. '/' .. ARGV[2]
local counted = first_of(tally) or tonumber(ARGV[5])
local tapped = tonumber(ARGV[4])
if tapped > counted then
  redis.call('HINCRBY', KEYS[1], 'likes', tapped - counted)
  counted = tapped
end
redis.call('HSET', KEYS[3], tally, counted .. ':' .. stamp)
if tonumber(ARGV[3]) > (first_of(ARGV[1]) or 0) then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. ':' .. stamp)
  if tonumber(ARGV[6]) > 0 then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[6] .. ':' .. stamp)
  else
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
local traces = redis.call('HGETALL', KEYS[3])
for i = 1, #traces, 2 do
  if tonumber(string.match(traces[i + 1], ':(%d+)$')) < now_ms - tonumber(ARGV[11]) then
    redis.call('HDEL', KEYS[3], traces[i])
  end
end
local likes = tonumber(redis.call('HGET', KEYS[1], 'likes'))
local total = 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local count, at = string.match(entries[i + 1], '(%d+):(%d+)')
  if tonumber(at) < now_ms - tonumber(ARGV[7]) then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    total = total + tonumber(count)
  end
end
local peak = tonumber(redis.call('HGET', KEYS[1], 'peak') or '0')
if total > peak then
  peak = total
  redis.call('HSET', KEYS[1], 'peak', peak)
end
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[8])
end
return {likes, total, peak}
"""
)


# A token bucket kept as the time it is full again (GCRA: one key, no refill to write): a turn
# is taken while that time is at most `burst - 1` turns away. Redis's clock, not the caller's,
# so that processes whose clocks differ share one bucket. Microseconds, exact in Lua's doubles.
# KEYS[1] the bucket; ARGV[1] microseconds a turn, ARGV[2] burst.
_TURN = (
    _REDIS_NOW
    + """
local interval = tonumber(ARGV[1])
local full_at = tonumber(redis.call('GET', KEYS[1])) or now_us
if full_at - now_us > (tonumber(ARGV[2]) - 1) * interval then
  return 0
end
full_at = math.max(full_at, now_us) + interval
local ms = math.ceil((full_at - now_us) / 1000)
redis.call('SET', KEYS[1], string.format('%d', full_at), 'PX', ms)
return 1
"""
)


# A turn spaced from the last one (Broker.take_spaced_turn), by Redis's clock as _TURN is.
# KEYS[1] the last turn's time; ARGV[1] microseconds since it at least, ARGV[2] ms it is kept.
_SPACED_TURN = (
    _REDIS_NOW
    + """
local last = tonumber(redis.call('GET', KEYS[1]))
if last and now_us - last < tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], string.format('%d', now_us), 'PX', ARGV[2])
return 1
"""
)


def _key(room_id: str, name: str) -> str:
    """A room's key: the room id as the hash tag keeps a room's keys in one cluster slot, so
    that one script may use them all."""
    return f"liveshop:{{{room_id}}}:{name}"


def _keys(room_id: str) -> tuple[str, str, str, str]:
    return (
        _key(room_id, "stream"),
        _key(room_id, "history"),
        _key(room_id, "counters"),
        _key(room_id, "viewers"),
    )


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        history_events: int = 1000,
        history_seconds: float = 600,
    ) -> None:
        self.node_id = new_epoch()
        self.history_events = history_events
        self.history_seconds = history_seconds
        # Bounded and blocking: a burst of publishes waits for a connection (redis_client).
        self._redis = redis_client(url, max_connections=MAX_CONNECTIONS)
        self._private = GroupCommit(self._publish_private_batch)
        self._pubsub = self._redis.pubsub()
        # The pub/sub connection is one socket for the reader and every (un)subscribe: a
        # (re)connect's handshake reads its replies, and must not race the reader's reads, nor
        # another (re)connect. Whoever (re)connects holds this; the reader reads only once the
        # connection is up, never during a handshake.
        self._connecting = asyncio.Lock()
        self._publish = self._redis.register_script(_PUBLISH)
        self._counters = self._redis.register_script(_COUNTERS)
        self._turn = self._redis.register_script(_TURN)
        self._spaced_turn = self._redis.register_script(_SPACED_TURN)
        self._listener: BrokerListener | None = None
        self._reader: asyncio.Task[None] | None = None
        self._room_prefix = room_channel("")
        self._user_prefix = user_channel("")

    def attach(self, listener: BrokerListener) -> None:
        self._listener = listener

    async def start(self) -> None:
        # A channel of our own keeps the pub/sub connection alive while no room is watched.
        await self._pubsub.subscribe(f"liveshop:node:{self.node_id}")
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")

    async def close(self) -> None:
        await self._private.wait_idle()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    @redis_unreachable_is_unavailable
    async def ping(self) -> None:
        await self._redis.ping()

    @redis_unreachable_is_unavailable
    async def publish(
        self,
        room_id: str,
        event: dict[str, Any],
        *,
        topic: str | None = None,
        last: bool = False,
        order: int | None = None,
    ) -> int:
        stream, history, _, _ = _keys(room_id)
        args: list[str | int] = [
            encode_body(event),
            room_channel(room_id),
            self.history_events,
            KEPT_SECONDS,
            new_epoch(),
            topic or "",
            "1" if last and topic else "0",
            "" if order is None else order,
        ]
        keys = [stream, history, _key(room_id, "closed"), _key(room_id, "orders")]
        return int(await self._publish(keys=keys, args=args))

    @redis_unreachable_is_unavailable
    async def publish_control(self, room_id: str, control: dict[str, Any]) -> None:
        await self._redis.publish(room_channel(room_id), encode_body(control))

    async def publish_private(self, user_id: str, event: dict[str, Any]) -> None:
        # A flash sale's orders are written in batches, so their `order.updated` events come in
        # hundreds at once: they share one pipeline (see group_commit.py).
        await self._private.submit(None, (user_channel(user_id), encode_body(event)))

    @redis_unreachable_is_unavailable  # once per batch; GroupCommit hands each caller a copy
    async def _publish_private_batch(self, _: None, messages: list[tuple[str, str]]) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, body in messages:
                pipe.publish(channel, body)
            return [int(receivers) for receivers in await pipe.execute()]

    @redis_unreachable_is_unavailable
    async def subscribe_room(self, room_id: str) -> None:
        await self._subscribe(room_channel(room_id))

    @redis_unreachable_is_unavailable
    async def unsubscribe_room(self, room_id: str) -> None:
        await self._unsubscribe(room_channel(room_id))

    @redis_unreachable_is_unavailable
    async def subscribe_user(self, user_id: str) -> None:
        await self._subscribe(user_channel(user_id))

    @redis_unreachable_is_unavailable
    async def unsubscribe_user(self, user_id: str) -> None:
        await self._unsubscribe(user_channel(user_id))

    async def _subscribe(self, channel: str) -> None:
        async with self._connecting:
            await self._pubsub.subscribe(channel)

    async def _unsubscribe(self, channel: str) -> None:
        async with self._connecting:
            try:
                await self._pubsub.unsubscribe(channel)
            except BaseException:
                # redis-py forgets a channel once Redis confirms: one that Redis never heard of
                # leaving would be subscribed again at every reconnect, for good.
                self._pubsub.channels.pop(channel, None)
                raise

    @redis_unreachable_is_unavailable
    async def position(self, room_id: str) -> StreamPosition:
        stream, *_ = _keys(room_id)
        seq, epoch = await self._redis.hmget(stream, ["seq", "epoch"])
        if epoch is None:
            # First touch of the room (or history lost): settle the epoch now, atomically.
            await self._redis.hsetnx(stream, "epoch", new_epoch())
            await self._redis.expire(stream, KEPT_SECONDS)
            seq, epoch = await self._redis.hmget(stream, ["seq", "epoch"])
        return StreamPosition(int(seq or 0), str(epoch))

    @redis_unreachable_is_unavailable
    async def history(self, room_id: str, after_seq: int, epoch: str) -> list[str] | None:
        stream, history, _, _ = _keys(room_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.hmget(stream, ["seq", "epoch"])
            pipe.xrange(history, min=f"{after_seq + 1}-0", max="+")
            (seconds, micros), (seq, current_epoch), entries = await pipe.execute()
        last = int(seq or 0)
        if current_epoch != epoch or after_seq > last:
            return None
        if after_seq == last:
            return []
        # By Redis's clock, as _PUBLISH stamps the events: not the publisher's nor this one's.
        oldest_allowed_ms = _ms(seconds, micros) - self.history_seconds * 1000
        if not entries or int(entries[0][0].split("-")[0]) != after_seq + 1:
            return None
        if int(entries[0][1]["t"]) < oldest_allowed_ms:
            return None
        return [fields["f"] for _, fields in entries]

    @redis_unreachable_is_unavailable
    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        _, _, counters, viewers = _keys(room_id)
        args: list[str | int] = [
            self.node_id,
            report.tally,
            report.number,
            report.likes,
            report.likes_counted,
            report.viewers,
            int(STALE_SECONDS * 1000),
            KEPT_SECONDS,
            *kept,
            int(REPORT_TRACE_SECONDS * 1000),
        ]
        keys = [counters, viewers, _key(room_id, "reports")]
        likes, total, peak = await self._counters(keys=keys, args=args)
        return Counters(likes=int(likes), viewers=int(total), peak_viewers=int(peak))

    @redis_unreachable_is_unavailable
    async def read_counters(self, room_id: str) -> Counters:
        _, _, counters, viewers = _keys(room_id)
        async with self._redis.pipeline(transaction=False) as pipe:  # one round trip
            pipe.time()
            pipe.hmget(counters, ["likes", "peak"])
            pipe.hgetall(viewers)
            (seconds, micros), (likes, peak), reports = await pipe.execute()
        # By Redis's clock, as the counters' script writes them (see _COUNTERS).
        fresh_after = _ms(seconds, micros) - STALE_SECONDS * 1000
        total = 0
        for value in reports.values():
            count, _, at = str(value).partition(":")
            if int(at) >= fresh_after:
                total += int(count)
        return Counters(likes=int(likes or 0), viewers=total, peak_viewers=int(peak or 0))

    @redis_unreachable_is_unavailable
    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        key = _key(room_id, f"gate:{name}")
        return bool(await self._redis.set(key, self.node_id, nx=True, px=int(seconds * 1000)))

    @redis_unreachable_is_unavailable
    async def take_turn(self, room_id: str, name: str, burst: int, per_second: float) -> bool:
        key = _key(room_id, f"turn:{name}")
        interval_us = max(1, round(1_000_000 / per_second))
        return bool(await self._turn(keys=[key], args=[interval_us, burst]))

    @redis_unreachable_is_unavailable
    async def take_spaced_turn(self, room_id: str, name: str, seconds: float) -> bool:
        key = _key(room_id, f"spaced:{name}")
        args = [round(seconds * 1_000_000), round(SPACED_TURNS_KEPT_SECONDS * 1000)]
        return bool(await self._spaced_turn(keys=[key], args=args))

    async def _read_forever(self) -> None:
        # A reader that died would leave this process deaf to every room, silently: whatever
        # goes wrong is logged, and it goes on.
        backoff = 0.05
        while True:
            try:
                async with self._connecting:
                    connection = self._pubsub.connection
                    if connection is not None and not connection.is_connected:
                        await self._pubsub.connect()  # and re-subscribes every channel
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message)
                backoff = 0.05
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, RedisError | OSError) or closed_transport(exc):
                    # redis-py leaves a broken pub/sub connection marked connected; drop it so
                    # the next read reconnects and re-subscribes every channel. The subscribe
                    # confirmations that follow tell the hub to look for missed events.
                    log.warning("broker_connection_lost", extra={"error": type(exc).__name__})
                    await self._drop_connection()
                else:
                    log.warning("broker_reader_failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _drop_connection(self) -> None:
        async with self._connecting:
            connection = self._pubsub.connection
            with contextlib.suppress(Exception):  # it is broken already
                if connection is not None:
                    await connection.disconnect()

    def _dispatch(self, message: dict[str, Any]) -> None:
        listener = self._listener
        channel = message.get("channel")
        if listener is None or not isinstance(channel, str):
            return
        kind = message.get("type")
        if kind == "message":
            if channel.startswith(self._room_prefix):
                listener.on_room_frame(channel[len(self._room_prefix) :], message["data"])
            elif channel.startswith(self._user_prefix):
                listener.on_user_frame(channel[len(self._user_prefix) :], message["data"])
        elif kind == "subscribe" and channel.startswith(self._room_prefix):
            listener.on_room_subscribed(channel[len(self._room_prefix) :])


def _ms(seconds: int, micros: int) -> int:
    """Redis's TIME reply in milliseconds, as _REDIS_NOW's `now_ms`."""
    return seconds * 1000 + micros // 1000
