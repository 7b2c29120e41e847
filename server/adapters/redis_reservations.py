"""Stock reservations in Redis: one Lua script per change, so each is atomic on the server and
no claim can oversell, whatever the number of processes.

Each offer has, under one hash tag so a cluster keeps them on one shard:
  liveshop:{offer:ID}:state    hash: quantity, stock, limit, starts, ends (epoch ms), stopped,
                               expire_at; v (the stock's version, see StockFigure); sold_out
                               ('1': stopped as sold out, see stop_if_sold_out);
                               unconfirmed (a token: rebuilt, claims wait for confirm_open
                               with that token)
  liveshop:{offer:ID}:held     hash: buyer id -> units held
  liveshop:{offer:ID}:claims   hash: idempotency key -> JSON {r: reservation id, b: buyer,
                               q: units, t: created ms, o: order id, x: 1 once released}
  liveshop:{offer:ID}:pending  sorted set: keys with no order yet, scored by created ms
A missing state hash means Redis lost the offer: claims answer `paused` until a rebuild.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as redis

from server.adapters.group_commit import GroupCommit
from server.adapters.redis_client import redis_client, redis_unreachable_is_unavailable
from server.domain.offers import (
    PENDING_BATCH,
    AttachOutcome,
    ClaimOutcome,
    ClaimResult,
    PendingReservation,
    RecoveredClaim,
    StockFigure,
    StockSnapshot,
    being_restored,
    stock_kept_until_ms,
    tally_recovered,
    validate_claim,
    validate_stock_plan,
)
from server.domain.times import epoch_ms, from_epoch_ms

log = logging.getLogger("liveshop.reservations")

MAX_CONNECTIONS = 64  # a pool of its own when given a URL; batching keeps it small

# An offer's first version, on opening it or rebuilding it: Redis's clock in microseconds, as
# digits (a Lua number would print in exponent notation), above any version it had before.
_FIRST_VERSION = """
local clock = redis.call('TIME')
local first_version = clock[1] .. string.format('%06d', tonumber(clock[2]))
"""

_OPEN = (
    _FIRST_VERSION
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', ARGV[1], 'limit', ARGV[2],
  'starts', ARGV[3], 'ends', ARGV[4], 'stopped', '0', 'expire_at', ARGV[5], 'v', first_version)
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return 1
"""
)

# One call reserves for every claim in ARGV (groups of buyer, units, key, now ms, reservation
# id), in order, each exactly as if it came alone: claims arriving together share one round
# trip (see group_commit.py). The order of checks matters: a known key answers first, so a
# retry after the end or after the last unit still finds its reservation; then a stopped offer
# answers not_active, also while a rebuild has yet to confirm it (else `paused` would send
# every claim to rebuild an offer that has ended). Over the buyer's limit comes before fewer
# units left than asked for, since claiming fewer would not help then; but nothing left at all
# is sold out whoever asks. Keep MemoryStockReservations.claim in step.
_CLAIM = """
local function claim(buyer, qty, key, now_ms, rid)
  local now = tonumber(now_ms)
  local state = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'starts', 'ends', 'stopped',
    'expire_at', 'unconfirmed', 'v')
  if not state[1] then return {'paused'} end
  local stock = tonumber(state[1])
  local raw = redis.call('HGET', KEYS[3], key)
  if raw then
    local r = cjson.decode(raw)
    if r.b ~= buyer then return {'key_reused', stock} end
    return {'duplicate', stock, r.r, r.o or '', r.q, r.x or 0, tonumber(state[8] or '0')}
  end
  if state[5] == '1' or now >= tonumber(state[4]) then return {'not_active', stock} end
  if now < tonumber(state[3]) then return {'not_active', stock, 'early'} end
  if state[7] then return {'paused'} end
  if stock == 0 then return {'sold_out', stock} end
  local mine = tonumber(redis.call('HGET', KEYS[2], buyer) or '0')
  if mine + qty > tonumber(state[2]) then return {'limit_reached', stock} end
  if stock < qty then return {'sold_out', stock} end
  stock = redis.call('HINCRBY', KEYS[1], 'stock', -qty)
  local version = redis.call('HINCRBY', KEYS[1], 'v', 1)
  redis.call('HINCRBY', KEYS[2], buyer, qty)
  redis.call('HSET', KEYS[3], key, cjson.encode({r = rid, b = buyer, q = qty, t = now_ms}))
  redis.call('ZADD', KEYS[4], now, key)
  for i = 2, 4 do redis.call('PEXPIREAT', KEYS[i], state[6]) end
  return {'reserved', stock, rid, '', qty, 0, version}
end
local out = {}
for i = 1, #ARGV, 5 do
  out[#out + 1] = claim(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
return out
"""

_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if not raw then return 0 end
local r = cjson.decode(raw)
if r.x == 1 then return 0 end
if ARGV[2] == '1' and r.o then return 0 end
if ARGV[3] ~= '' and not r.o then r.o = ARGV[3] end
r.x = 1
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(r))
if redis.call('HGET', KEYS[1], 'sold_out') ~= '1' then
  redis.call('HINCRBY', KEYS[1], 'stock', r.q)
  redis.call('HINCRBY', KEYS[1], 'v', 1)
end
if redis.call('HINCRBY', KEYS[2], r.b, -r.q) <= 0 then redis.call('HDEL', KEYS[2], r.b) end
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# Attaches every (key, order id) pair in ARGV, in order; one answer per pair.
_ATTACH = """
local function attach(key, order_id)
  if redis.call('EXISTS', KEYS[1]) == 0 then return 'paused' end
  local raw = redis.call('HGET', KEYS[3], key)
  if not raw then return 'unknown' end
  local r = cjson.decode(raw)
  if r.x == 1 then return 'released' end
  if not r.o then
    r.o = order_id
    redis.call('HSET', KEYS[3], key, cjson.encode(r))
    redis.call('ZREM', KEYS[4], key)
  end
  if r.o == order_id then return 'attached' end
  return 'unknown'
end
local out = {}
for i = 1, #ARGV, 2 do out[#out + 1] = attach(ARGV[i], ARGV[i + 1]) end
return out
"""

_PENDING = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, k in ipairs(keys) do
  local raw = redis.call('HGET', KEYS[3], k)
  if raw then
    out[#out + 1] = k
    out[#out + 1] = raw
  end
end
return out
"""

# The units taken, or nil when the offer is lost.
# ARGV[1] '1': the end is a sold-out one, and the stock is marked so (see stop_if_sold_out).
_STOP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local was = redis.call('HMGET', KEYS[1], 'stopped', 'sold_out')
if was[1] ~= '1' or (ARGV[1] == '1' and was[2] ~= '1') then
  redis.call('HINCRBY', KEYS[1], 'v', 1)
end
redis.call('HSET', KEYS[1], 'stopped', '1')
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'sold_out', '1', 'stock', 0) end
local state = redis.call('HMGET', KEYS[1], 'quantity', 'stock')
return math.max(0, tonumber(state[1]) - tonumber(state[2]))
"""

# Stopped, as any end stops it (so a process of the version before, which knows no `sold_out`,
# refuses claims all the same), and marked sold out.
_STOP_IF_SOLD_OUT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local state = redis.call('HMGET', KEYS[1], 'stock', 'stopped', 'sold_out')
if state[3] == '1' then return 1 end
if state[2] == '1' or tonumber(state[1]) > 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'stopped', '1', 'sold_out', '1')
return 1
"""

_CONFIRM_OPEN = """
if redis.call('HGET', KEYS[1], 'unconfirmed') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'unconfirmed')
end
return 1
"""

# Leftovers of a partial loss (the state hash evicted alone) are dropped: the orders are the
# truth, and a reservation without an order finds itself unknown when its order arrives.
_REBUILD = (
    _FIRST_VERSION
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local held = 0
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  local r = cjson.decode(ARGV[i + 1])
  if r.x ~= 1 then
    held = held + r.q
    redis.call('HINCRBY', KEYS[2], r.b, r.q)
  end
end
local stock = math.max(0, tonumber(ARGV[1]) - held)
local stopped = ARGV[5] == '0' and '0' or '1'
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', stock, 'limit', ARGV[2],
  'starts', ARGV[3], 'ends', ARGV[4], 'stopped', stopped, 'expire_at', ARGV[6],
  'v', first_version)
-- '2': it ended sold out, and stays so (see stop_if_sold_out).
if ARGV[5] == '2' then redis.call('HSET', KEYS[1], 'stock', 0, 'sold_out', '1') end
-- Not stopped: it may have ended since the rebuilder read it (see confirm_open).
if stopped == '0' then redis.call('HSET', KEYS[1], 'unconfirmed', ARGV[7]) end
for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], ARGV[6]) end
return 1
"""
)


def _keys(offer_id: str) -> list[str]:
    tag = f"liveshop:{{offer:{offer_id}}}"
    return [f"{tag}:state", f"{tag}:held", f"{tag}:claims", f"{tag}:pending"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# buyer, units, idempotency key, now (epoch ms), reservation id: one claim's script arguments.
_ClaimArgs = tuple[str, int, str, int, str]


def _claim_result(reply: list[Any]) -> ClaimResult:
    outcome = ClaimOutcome(_text(reply[0]))
    if outcome is ClaimOutcome.PAUSED:
        return ClaimResult(outcome)
    remaining = int(reply[1])
    if len(reply) <= 3:  # a refusal: a claim before the offer's start says so
        return ClaimResult(outcome, remaining, early=len(reply) == 3)
    return ClaimResult(
        outcome,
        remaining,
        reservation_id=_text(reply[2]),
        order_id=_text(reply[3]) or None,
        quantity=int(reply[4]),
        released=int(reply[5]) == 1,
        stock_version=int(reply[6]),
    )


class RedisStockReservations:
    """`StockReservations` on Redis. Give it a URL (it then owns a bounded connection pool) or a
    client of your own (left open by `close`)."""

    def __init__(self, redis_or_url: str | redis.Redis) -> None:
        if isinstance(redis_or_url, str):
            self._redis = redis_client(redis_or_url, max_connections=MAX_CONNECTIONS)
            self._owns_client = True
        else:
            self._redis = redis_or_url
            self._owns_client = False
        self._open = self._redis.register_script(_OPEN)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._attach = self._redis.register_script(_ATTACH)
        self._pending = self._redis.register_script(_PENDING)
        self._stop = self._redis.register_script(_STOP)
        self._stop_if_sold_out = self._redis.register_script(_STOP_IF_SOLD_OUT)
        self._confirm_open = self._redis.register_script(_CONFIRM_OPEN)
        self._rebuild = self._redis.register_script(_REBUILD)
        self._claims = GroupCommit(self._claim_batch)
        self._attaches = GroupCommit(self._attach_batch)
        # Reservation ids: unique to this store (random) and then counted, rather than 12
        # random bytes a claim, which cost a system call each, mostly for claims refused.
        self._id_prefix = f"rsv_{secrets.token_urlsafe(9)}"
        self._ids = itertools.count(1)

    async def close(self) -> None:
        await self._claims.wait_idle()
        await self._attaches.wait_idle()
        if self._owns_client:
            await self._redis.aclose()

    def _expire_at_ms(self, ends_at: datetime) -> int:
        return stock_kept_until_ms(epoch_ms(ends_at), int(time.time() * 1000))

    @redis_unreachable_is_unavailable
    async def open_offer(
        self,
        offer_id: str,
        *,
        quantity: int,
        per_user_limit: int,
        starts_at: datetime,
        ends_at: datetime,
    ) -> bool:
        validate_stock_plan(quantity, per_user_limit, starts_at, ends_at)
        args = [
            quantity,
            per_user_limit,
            epoch_ms(starts_at),
            epoch_ms(ends_at),
            self._expire_at_ms(ends_at),
        ]
        return bool(await self._open(keys=_keys(offer_id), args=args))

    async def claim(
        self, offer_id: str, buyer_id: str, quantity: int, idempotency_key: str, now: datetime
    ) -> ClaimResult:
        validate_claim(buyer_id, quantity, idempotency_key)
        reservation_id = f"{self._id_prefix}{next(self._ids):x}"
        args = (buyer_id, quantity, idempotency_key, epoch_ms(now), reservation_id)
        return await self._claims.submit(offer_id, args)

    @redis_unreachable_is_unavailable  # once per batch; GroupCommit hands each caller a copy
    async def _claim_batch(self, offer_id: str, batch: list[_ClaimArgs]) -> list[ClaimResult]:
        args = [arg for claim in batch for arg in claim]
        return [
            _claim_result(reply) for reply in await self._claim(keys=_keys(offer_id), args=args)
        ]

    async def attach_order(
        self, offer_id: str, idempotency_key: str, order_id: str
    ) -> AttachOutcome:
        return await self._attaches.submit(offer_id, (idempotency_key, order_id))

    @redis_unreachable_is_unavailable
    async def _attach_batch(
        self, offer_id: str, batch: list[tuple[str, str]]
    ) -> list[AttachOutcome]:
        args = [arg for pair in batch for arg in pair]
        return [
            AttachOutcome(_text(reply))
            for reply in await self._attach(keys=_keys(offer_id), args=args)
        ]

    @redis_unreachable_is_unavailable
    async def release(
        self,
        offer_id: str,
        idempotency_key: str,
        *,
        orphan_only: bool = False,
        for_order: str | None = None,
    ) -> bool:
        args = [idempotency_key, "1" if orphan_only else "0", for_order or ""]
        released = int(await self._release(keys=_keys(offer_id), args=args))
        if released < 0:
            raise being_restored(offer_id)
        return released == 1

    @redis_unreachable_is_unavailable
    async def knows_claim(self, offer_id: str, idempotency_key: str) -> bool:
        return bool(await self._redis.hexists(_keys(offer_id)[2], idempotency_key))

    async def remaining(self, offer_id: str) -> int:
        return (await self.figure(offer_id)).remaining

    @redis_unreachable_is_unavailable
    async def figure(self, offer_id: str) -> StockFigure:
        stock, version = await self._redis.hmget(_keys(offer_id)[0], ["stock", "v"])
        if stock is None:
            raise being_restored(offer_id)
        # An offer opened before stocks had versions counts its changes from 0.
        return StockFigure(int(stock), int(version or 0))

    @redis_unreachable_is_unavailable
    async def pending_without_order(
        self, offer_id: str, older_than: datetime
    ) -> list[PendingReservation]:
        args = [epoch_ms(older_than), PENDING_BATCH]
        reply = await self._pending(keys=_keys(offer_id), args=args)
        found = []
        for key, raw in zip(reply[::2], reply[1::2], strict=True):
            record = json.loads(_text(raw))
            found.append(
                PendingReservation(
                    idempotency_key=_text(key),
                    reservation_id=str(record["r"]),
                    buyer_id=str(record["b"]),
                    quantity=int(record["q"]),
                    created_at=from_epoch_ms(int(record["t"])),
                )
            )
        return found

    @redis_unreachable_is_unavailable
    async def stop(self, offer_id: str, *, sold_out: bool = False) -> int | None:
        taken = await self._stop(keys=_keys(offer_id), args=["1" if sold_out else "0"])
        return None if taken is None else int(taken)

    @redis_unreachable_is_unavailable
    async def stop_if_sold_out(self, offer_id: str) -> bool:
        stopped = int(await self._stop_if_sold_out(keys=_keys(offer_id), args=[]))
        if stopped < 0:
            raise being_restored(offer_id)
        return stopped == 1

    @redis_unreachable_is_unavailable
    async def unconfirmed(self, offer_id: str) -> str | None:
        token = await self._redis.hget(_keys(offer_id)[0], "unconfirmed")
        return None if token is None else _text(token)

    @redis_unreachable_is_unavailable
    async def confirm_open(self, offer_id: str, token: str) -> None:
        await self._confirm_open(keys=_keys(offer_id), args=[token])

    @redis_unreachable_is_unavailable
    async def is_ready(self, offer_id: str) -> bool:
        return bool(await self._redis.exists(_keys(offer_id)[0]))

    @redis_unreachable_is_unavailable
    async def rebuild(
        self,
        offer_id: str,
        *,
        quantity: int,
        per_user_limit: int,
        starts_at: datetime,
        ends_at: datetime,
        stopped: bool,
        claims: Sequence[RecoveredClaim],
        sold_out: bool = False,
    ) -> bool:
        validate_stock_plan(quantity, per_user_limit, starts_at, ends_at)
        held = sum(tally_recovered(claims).values())
        args: list[str | int] = [
            quantity,
            per_user_limit,
            epoch_ms(starts_at),
            epoch_ms(ends_at),
            "2" if sold_out else "1" if stopped else "0",  # see _REBUILD
            self._expire_at_ms(ends_at),
            secrets.token_urlsafe(9),  # this rebuild's, for confirm_open
        ]
        for c in claims:
            record = {
                "r": c.restored_reservation_id,
                "b": c.buyer_id,
                "q": c.quantity,
                "t": "0",
                "o": c.order_id,
                "x": 0 if c.held else 1,
            }
            args += [c.idempotency_key, json.dumps(record, ensure_ascii=False)]
        rebuilt = bool(await self._rebuild(keys=_keys(offer_id), args=args))
        if rebuilt:
            # Checked only once written: a rebuild that read the orders after another had
            # rebuilt the stock may count an order written late, which late_orders.py cancels.
            if held > quantity:
                log.error(
                    "reservations_rebuild_oversold",
                    extra={"offer_id": offer_id, "quantity": quantity, "held": held},
                )
            log.info(
                "reservations_rebuilt",
                extra={"offer_id": offer_id, "claims": len(claims), "held": held},
            )
        return rebuilt

    @redis_unreachable_is_unavailable
    async def snapshot(self, offer_id: str) -> StockSnapshot | None:
        state_key, held_key, _, _ = _keys(offer_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(state_key)
            pipe.hgetall(held_key)
            state, held = await pipe.execute()
        if not state:
            return None
        s = {_text(k): _text(v) for k, v in state.items()}
        return StockSnapshot(
            quantity=int(s["quantity"]),
            per_user_limit=int(s["limit"]),
            starts_at=from_epoch_ms(int(s["starts"])),
            ends_at=from_epoch_ms(int(s["ends"])),
            remaining=int(s["stock"]),
            stopped=s["stopped"] == "1",
            held_by_buyer={_text(k): int(v) for k, v in held.items()},
        )
