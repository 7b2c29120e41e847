"""What a flash-sale run must get right: every claim answered, retries consistent, orders in
MongoDB and stock in Redis as they must be."""

from __future__ import annotations

import collections
import contextlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import AsyncMongoClient

from bench.buyers import DATABASE, Claim, ClaimRun
from bench.cpu import percentiles
from bench.servers import Child
from server.adapters.redis_reservations import RedisStockReservations
from server.domain.orders import HOLDS_STOCK


def outcome_counts(claims: Iterable[Claim]) -> dict[str, int]:
    return dict(collections.Counter(c.outcome or "unanswered" for c in claims).most_common())


def summarize_claims(run: ClaimRun) -> dict[str, Any]:
    claims = run.claims
    answered = [c for c in claims if c.outcome]
    span_s = max(run.last_answer_ns - run.first_send_ns, 1) / 1e9
    primaries = [c for c in claims if c.kind == "primary"]
    last_primary = max((c.answered_ns for c in primaries if c.outcome), default=run.first_send_ns)
    groups: dict[str, list[Claim]] = {
        "all": claims,
        "primary": primaries,
        "primary_ws": [c for c in primaries if c.buyer.via == "ws"],
        "primary_http": [c for c in primaries if c.buyer.via == "http"],
        "retry_concurrent": [c for c in claims if c.kind == "retry_concurrent"],
        "retry_after": [c for c in claims if c.kind == "retry_after"],
    }
    by_group = {}
    for name, group in groups.items():
        done = [c for c in group if c.outcome]
        by_group[name] = {
            "sent": len(group),
            "answered": len(done),
            "outcomes": outcome_counts(group),
            "latency": percentiles(c.latency_ms for c in done),
            "by_transport": dict(collections.Counter(c.buyer.via for c in group)),
        }
    return {
        "span_s": round(span_s, 3),
        "answers": len(answered),
        "answers_per_s": round(len(answered) / span_s, 1),
        "primary_answers_per_s": round(
            sum(1 for c in primaries if c.outcome)
            / max((last_primary - run.first_send_ns) / 1e9, 1e-9),
            1,
        ),
        "groups": by_group,
        "order_answer_statuses": dict(
            collections.Counter(str(c.status) for c in claims if c.outcome == "order")
        ),
        "unmatched_ws_frames": dict(run.unmatched_ws_frames),
    }


def unanswered(claims: list[Claim]) -> dict[str, Any]:
    """Claims that never got an answer, by transport, kind and what the buyer's first claim got."""
    first = {c.buyer.user_id: c for c in claims if c.kind == "primary"}
    counts = collections.Counter(
        f"{c.buyer.via}:{c.kind}:first={first[c.buyer.user_id].outcome or 'unanswered'}"
        for c in claims
        if not c.outcome
    )
    return {"total": sum(counts.values()), "by_kind": dict(counts)}


def retry_consistency(
    claims: list[Claim], orders_by_key: dict[tuple[str, str], set[str]]
) -> dict[str, Any]:
    """Every answered retry must agree with its buyer's first answer. A different order, or an
    order against a refusal, is a broken promise ("order_mismatch"); one refusal code for
    another (sold_out, then offer_not_active once the sold-out offer has ended) is only noted.
    So is a (buyer, key) for which more than one order id was heard, in any answer or in any
    `order.updated` on any of the buyer's sockets ("keys_with_several_orders"): a websocket
    retry's twin may take the first claim's broadcast as its answer, and this is what tells
    two orders for one key apart there.
    HTTP: of a pair that both got the order, exactly one should say Idempotent-Replayed: false."""
    first = {c.buyer.user_id: c for c in claims if c.kind == "primary"}
    order_mismatch, refusal_changed = [], collections.Counter[str]()
    replay_headers, pairs = collections.Counter[str](), collections.Counter[str]()
    for c in claims:
        p = first[c.buyer.user_id]
        if c.kind == "primary" or not c.outcome or not p.outcome:
            continue
        if c.buyer.via == "http" and c.outcome == "order":
            replay_headers[f"{c.kind}:{c.replayed}"] += 1
            if c.kind == "retry_concurrent" and p.outcome == "order":
                pairs[f"first={p.replayed},retry={c.replayed}"] += 1
        if "order" in (c.outcome, p.outcome) and c.order_id != p.order_id:
            order_mismatch.append(
                {
                    "buyer": c.buyer.user_id,
                    "via": c.buyer.via,
                    "kind": c.kind,
                    "first": [p.outcome, p.order_id],
                    "retry": [c.outcome, c.order_id],
                }
            )
        elif c.outcome != p.outcome:
            refusal_changed[f"{p.outcome}->{c.outcome}"] += 1
    several = {k: sorted(v) for k, v in orders_by_key.items() if len(v) > 1}
    return {
        "order_mismatch": len(order_mismatch),
        "order_mismatch_examples": order_mismatch[:10],
        "keys_with_several_orders": len(several),
        "keys_with_several_orders_examples": [[*k, ids] for k, ids in list(several.items())[:5]],
        "refusal_changed": dict(refusal_changed),
        "http_replay_headers": dict(replay_headers),
        "concurrent_http_pairs_replay_headers": dict(pairs),
    }


async def verify_orders(
    mongodb_url: str, offer_id: str, quantity: int, per_user_limit: int, told: set[str]
) -> dict[str, Any]:
    """What MongoDB holds for the offer: the truth the answers are judged against. `told` is
    every order id a buyer was answered with or heard of: each must exist and still hold stock
    (not cancelled as a reservation lost, nor expired), and every order must be one of them."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        orders = client[DATABASE]["orders"]
        match = {"$match": {"offer_id": offer_id}}
        statuses: dict[str, dict[str, int]] = {}
        group = {"$group": {"_id": "$status", "n": {"$sum": 1}, "units": {"$sum": "$quantity"}}}
        async for doc in await orders.aggregate([match, group]):
            statuses[str(doc["_id"])] = {"orders": doc["n"], "units": doc["units"]}
        per_key = {
            "$group": {
                "_id": {"buyer": "$buyer_id", "key": "$idempotency_key"},
                "n": {"$sum": 1},
            }
        }
        duplicates = [
            doc
            async for doc in await orders.aggregate([match, per_key, {"$match": {"n": {"$gt": 1}}}])
        ]
        holding = {
            "$match": {"offer_id": offer_id, "status": {"$in": [s.value for s in HOLDS_STOCK]}}
        }
        per_buyer = {"$group": {"_id": "$buyer_id", "n": {"$sum": "$quantity"}}}
        over_limit = [
            doc
            async for doc in await orders.aggregate(
                [holding, per_buyer, {"$match": {"n": {"$gt": per_user_limit}}}]
            )
        ]
        total = await orders.count_documents({"offer_id": offer_id})
        keys = await orders.distinct("idempotency_key", {"offer_id": offer_id})
        status_of: dict[str, str] = {}
        last_reason: dict[str, Any] = {}
        fields = {"_id": 1, "status": 1, "history": {"$slice": -1}}
        async for doc in orders.find({"offer_id": offer_id}, fields):
            status_of[str(doc["_id"])] = str(doc["status"])
            last_reason[str(doc["_id"])] = (doc.get("history") or [{}])[-1].get("reason")
    finally:
        await client.close()
    holds = {s.value for s in HOLDS_STOCK}
    held = sum(v["units"] for k, v in statuses.items() if k in holds)
    sold = statuses.get("pending_payment", {}).get("units", 0)
    not_holding = sorted(i for i in told if i in status_of and status_of[i] not in holds)
    return {
        "orders": total,
        "by_status": statuses,
        "units_sold": sold,
        "units_holding_stock": held,
        "oversell": max(0, held - quantity),
        "distinct_keys": len(keys),
        "duplicate_orders": sum(d["n"] - 1 for d in duplicates),
        "duplicate_examples": [str(d["_id"]) for d in duplicates[:5]],
        "per_user_limit": per_user_limit,
        "buyers_over_limit": len(over_limit),
        "orders_nobody_was_told_of": len(set(status_of) - told),
        "orders_told_but_missing": len(told - set(status_of)),
        "orders_told_not_holding_stock": len(not_holding),
        "told_not_holding_examples": [[i, status_of[i], last_reason[i]] for i in not_holding[:5]],
    }


def stock_balance(mongo: dict[str, Any], redis: dict[str, Any], quantity: int) -> dict[str, Any]:
    """Units held by orders (MongoDB) plus the offer's remaining stock (Redis) must be Q."""
    remaining = redis.get("remaining") if redis.get("present") else None
    held = mongo["units_holding_stock"]
    return {
        "held_by_orders": held,
        "remaining_in_redis": remaining,
        "held_in_redis": redis.get("held_units"),
        "quantity": quantity,
        "balanced": remaining is not None and held + remaining == quantity,
    }


async def redis_state(redis_url: str, offer_id: str) -> dict[str, Any]:
    store = RedisStockReservations(redis_url)
    try:
        snap = await store.snapshot(offer_id)
    finally:
        await store.close()
    if snap is None:
        return {"present": False}
    return {
        "present": True,
        "remaining": snap.remaining,
        "held_units": sum(snap.held_by_buyer.values()),
        "buyers_holding": len(snap.held_by_buyer),
    }


def server_log_summary(child: Child) -> dict[str, Any]:
    """Warnings and errors the server logged (it runs at LIVESHOP_LOG_LEVEL=warning)."""
    levels: collections.Counter[str] = collections.Counter()
    events: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    with contextlib.suppress(OSError):
        for line in child.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:
                    levels["unstructured"] += 1
                    if len(samples) < 10:
                        samples.append(line[:400])
                continue
            level = str(record.get("level"))
            levels[level] += 1
            events[f"{level}:{record.get('event')}"] += 1
            if level in ("error", "critical") and len(samples) < 10:
                samples.append(line[:1500])
    return {"levels": dict(levels), "events": dict(events.most_common(20)), "samples": samples}
