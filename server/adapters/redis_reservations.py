"""Stock reservations in Redis: one Lua script per change, so each is atomic on the server and
no claim can oversell, whatever the number of processes.

Each offer has, under one hash tag so a cluster keeps them on one shard:
  liveshop:{offer:ID}:state    hash: quantity, stock, limit, starts, ends (epoch ms), stopped,
                               expire_at; v (the stock's version, see StockFigure); build
                               (its first version: names the stock, see ClaimResult);
                               sold_out ('1': stopped as sold out, see stop_if_sold_out);
                               unconfirmed (a token: rebuilt, claims wait for confirm_open
                               with that token), with rebuilt_from (the orders it was rebuilt
                               from); run (the run id of the Redis that wrote it)
  liveshop:{offer:ID}:held     hash: buyer id -> units held
  liveshop:{offer:ID}:claims   hash: idempotency key -> JSON {r: reservation id, b: buyer,
                               q: units, t: created ms, o: order id, x: 1 once released}
  liveshop:{offer:ID}:pending  sorted set: keys with no order yet, scored by created ms
  liveshop:{offer:ID}:claimed  hash: buyer id -> claims made, whatever became of them (see
                               CLAIMS_BEYOND_LIMIT); a rebuild counts the buyer's orders
A missing state hash means Redis lost the offer: claims answer `paused` until a rebuild.

So does a state hash written by another run of Redis: one restarted from a snapshot or an
append-only file that missed its last writes, or a replica that took over before it had them,
holds an older copy than the orders acknowledged (units sold again, an ended offer selling, a
retry's key unknown). Redis's run id changes with every start, and a failover's new primary has
its own: each script that reads or changes an offer first drops a copy another run wrote
(`SAME_RUN` in redis_reservation_scripts.py), and the offer is rebuilt from the orders, as a
lost one is.
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
from redis.exceptions import ResponseError

from server.adapters import redis_reservation_scripts as scripts
from server.adapters.group_commit import GroupCommit
from server.adapters.redis_access import RedisChecks, RedisNotAllowed, check_user_allowed
from server.adapters.redis_client import (
    redis_client,
    redis_unreachable,
    redis_unreachable_is_unavailable,
)
from server.domain.errors import Unavailable
from server.domain.offers import (
    PENDING_BATCH,
    AttachOutcome,
    ClaimOutcome,
    ClaimResult,
    PendingReservation,
    RecoveredClaim,
    StockFigure,
    StockSnapshot,
    UnconfirmedStock,
    being_restored,
    stock_kept_until_ms,
    tally_recovered,
    validate_claim,
    validate_stock_plan,
)
from server.domain.times import epoch_ms, from_epoch_ms

log = logging.getLogger("liveshop.reservations")

MAX_CONNECTIONS = 64  # a pool of its own when given a URL; batching keeps it small


def _keys(offer_id: str) -> list[str]:
    tag = f"liveshop:{{offer:{offer_id}}}"
    return [f"{tag}:state", f"{tag}:held", f"{tag}:claims", f"{tag}:pending", f"{tag}:claimed"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(claim: RecoveredClaim) -> str:
    """The claims hash's record of a claim its order remembers (see the keys above)."""
    record = {
        "r": claim.restored_reservation_id,
        "b": claim.buyer_id,
        "q": claim.quantity,
        "t": "0",
        "o": claim.order_id,
        "x": 0 if claim.held else 1,
    }
    return json.dumps(record, ensure_ascii=False)


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
        stock_build=int(reply[7]) if reply[7] else None,  # None: a stock from before builds
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
        self._open = self._redis.register_script(scripts.OPEN)
        self._claim = self._redis.register_script(scripts.CLAIM)
        self._release = self._redis.register_script(scripts.RELEASE)
        self._attach = self._redis.register_script(scripts.ATTACH)
        self._pending = self._redis.register_script(scripts.PENDING)
        self._stop = self._redis.register_script(scripts.STOP)
        self._stop_if_sold_out = self._redis.register_script(scripts.STOP_IF_SOLD_OUT)
        self._confirm_open = self._redis.register_script(scripts.CONFIRM_OPEN)
        self._drop_unconfirmed = self._redis.register_script(scripts.DROP_UNCONFIRMED)
        self._unconfirmed = self._redis.register_script(scripts.UNCONFIRMED)
        self._rebuild = self._redis.register_script(scripts.REBUILD)
        self._ready = self._redis.register_script(scripts.READY)
        self._remember_released = self._redis.register_script(scripts.REMEMBER_RELEASED)
        self._claims = GroupCommit(self._claim_batch)
        self._attaches = GroupCommit(self._attach_batch)
        # Reservation ids: unique to this store (random) and then counted, rather than 12
        # random bytes a claim, which cost a system call each, mostly for claims refused.
        self._id_prefix = f"rsv_{secrets.token_urlsafe(9)}"
        self._ids = itertools.count(1)
        # Its Redis's rights and eviction policy, checked at start-up and then periodically.
        self.checks = RedisChecks(self.check_access)

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
        if self.checks.refusal is not None:
            # Refused while Redis fails a check, though that stops the sales of every offer:
            # an evicting Redis may drop any one of an offer's keys when its memory fills,
            # unnoticed (a buyer's count, a claim's key), and sell past the limit or the stock,
            # which a flash sale must never do; a user short of a right fails claims anyway.
            # Only claims: rooms, orders, cancels and housekeeping go on, and claims are taken
            # again within a housekeeping round of the fix.
            raise Unavailable("claims are paused: the stock's Redis is misconfigured")
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
        self, offer_id: str, idempotency_key: str, order_id: str, *, quantity: int | None = None
    ) -> AttachOutcome:
        units = "" if quantity is None else str(quantity)
        return await self._attaches.submit(offer_id, (idempotency_key, order_id, units))

    @redis_unreachable_is_unavailable
    async def _attach_batch(
        self, offer_id: str, batch: list[tuple[str, str, str]]
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
        reservation_id: str | None = None,
    ) -> bool:
        args = [idempotency_key, "1" if orphan_only else "0", for_order or "", reservation_id or ""]
        released = int(await self._release(keys=_keys(offer_id), args=args))
        if released < 0:
            raise being_restored(offer_id)
        return released == 1

    @redis_unreachable_is_unavailable
    async def remember_released(self, offer_id: str, claim: RecoveredClaim) -> bool:
        if claim.held:
            raise ValueError("a claim remembered holds nothing")
        args = [claim.idempotency_key, _record(claim)]
        kept = int(await self._remember_released(keys=_keys(offer_id), args=args))
        if kept < 0:
            raise being_restored(offer_id)
        return kept == 1

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
    async def unconfirmed(self, offer_id: str) -> UnconfirmedStock | None:
        # A script: a copy of the stock another run of Redis wrote must not be taken for it.
        noted = await self._unconfirmed(keys=_keys(offer_id), args=[])
        if noted is None:
            return None
        token, rebuilt_from, build, records = noted
        held = (json.loads(record) for record in records)
        return UnconfirmedStock(
            _text(token),
            int(rebuilt_from),  # 0 for a stock written before it was noted: dropped, rebuilt
            int(build),
            frozenset(r["o"] for r in held if r.get("o") and r.get("x") != 1),
        )

    @redis_unreachable_is_unavailable
    async def drop_unconfirmed(self, offer_id: str, token: str) -> None:
        await self._drop_unconfirmed(keys=_keys(offer_id), args=[token])

    @redis_unreachable_is_unavailable
    async def confirm_open(self, offer_id: str, token: str) -> None:
        await self._confirm_open(keys=_keys(offer_id), args=[token])

    @redis_unreachable_is_unavailable
    async def check_scripts_allowed(self) -> None:
        """Ask Redis whether Liveshop's user may run every command it sends (redis_access.py),
        then run a script as every offer's does (on no offer): a user short of a right, or a
        Redis whose INFO names no run, fails here (at start-up, then in `checks`' periodic
        runs), rather than in every claim."""
        await check_user_allowed(self._redis)
        try:
            await self._ready(keys=_keys("liveshop-start-up-check"), args=[])
        except ResponseError as exc:
            if redis_unreachable(exc):  # busy or full: not now, which is no refusal
                raise
            raise RedisNotAllowed(f"Redis refused Liveshop's reservation scripts ({exc})") from exc

    @redis_unreachable_is_unavailable
    async def check_keys_kept(self) -> None:
        """Redis must not evict an offer's keys (they have a TTL, so the `volatile-*` policies
        would take them too): one lost alone goes unnoticed, such as the buyers' counts, which
        lets a buyer past the limit, or the claims' keys, which takes units for good. Redis's
        own default, `noeviction`, keeps them and refuses writes when memory is full (claims
        then answer 503); managed services often default to `volatile-lru`. A Redis without a
        memory limit evicts nothing, whatever its policy."""
        memory = await self._redis.info("memory")
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        # Without a memory limit (maxmemory 0, a 64-bit Redis's default) nothing is evicted.
        if policy != "noeviction" and int(memory.get("maxmemory", 0)) != 0:
            raise RedisNotAllowed(
                f"Redis evicts keys when full (maxmemory-policy {policy}), which would lose"
                " parts of a flash offer's stock: set maxmemory-policy noeviction"
            )

    async def check_access(self) -> None:
        """Both checks: RedisNotAllowed when Redis fails one, Unavailable when it cannot be
        asked (`checks` runs this at start-up and then periodically)."""
        await self.check_scripts_allowed()
        await self.check_keys_kept()

    @redis_unreachable_is_unavailable
    async def is_ready(self, offer_id: str) -> bool:
        return bool(await self._ready(keys=_keys(offer_id), args=[]))

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
        after_build: int | None = None,
    ) -> bool:
        validate_stock_plan(quantity, per_user_limit, starts_at, ends_at)
        held = sum(tally_recovered(claims).values())
        args: list[str | int] = [
            quantity,
            per_user_limit,
            epoch_ms(starts_at),
            epoch_ms(ends_at),
            "2" if sold_out else "1" if stopped else "0",  # see scripts.REBUILD
            self._expire_at_ms(ends_at),
            secrets.token_urlsafe(9),  # this rebuild's, for confirm_open
            "" if after_build is None else after_build,
        ]
        for c in claims:
            args += [c.idempotency_key, _record(c)]
        rebuilt = bool(await self._rebuild(keys=_keys(offer_id), args=args))
        if rebuilt:
            # Checked only once written (a rebuild that finds the stock rebuilt writes nothing).
            # Its callers count no more than the offer may hold (stock_rebuilds.py): more is a
            # bug, which the memory store meets by selling nothing.
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
        state_key, held_key, *_ = _keys(offer_id)
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
