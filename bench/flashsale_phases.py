"""The flash-sale benchmark's phases: the no-op limit, the burst, the paced runs and the
Redis-script limit."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import profile
from bench.buyers import Buyer, ClaimRun, Shop, close_ws, connect_ws, http_pool_size, make_buyers
from bench.cpu import no_generator_gc, percentiles
from bench.flashsale_checks import (
    redis_state,
    retry_consistency,
    stock_balance,
    summarize_claims,
    unanswered,
    verify_orders,
)
from bench.httpload import HttpAnswer, HttpPool, request_bytes
from bench.spy import SPY_MAX_SECONDS, stop_spy
from server.adapters.redis_reservations import RedisStockReservations
from server.domain.offers import ClaimOutcome


async def run_noop(shop: Shop, size: int, seconds: float) -> dict[str, Any]:
    """`GET /healthz` in a closed loop on `size` keep-alive connections: the stack's ceiling."""
    pool = HttpPool(shop.server.port, size)
    await pool.open()
    raw = request_bytes("GET", "/healthz", shop.server.port, {})
    window = {"t0": 0, "t1": 0}
    latencies: list[float] = []
    errors = collections.Counter[str]()
    done = asyncio.Event()
    in_flight = 0

    def fire() -> None:
        nonlocal in_flight
        in_flight += 1
        sent = time.monotonic_ns()
        pool.submit(raw).add_done_callback(partial(landed, sent))

    def landed(sent: int, future: asyncio.Future[HttpAnswer]) -> None:
        nonlocal in_flight
        in_flight -= 1
        error = future.exception()
        if error is not None:
            errors[type(error).__name__] += 1
        else:
            answer = future.result()
            if answer.status != 200:
                errors[f"http_{answer.status}"] += 1
            elif window["t0"] <= answer.at_ns < window["t1"]:
                latencies.append((answer.at_ns - sent) / 1e6)
        if time.monotonic_ns() < window["t1"]:
            fire()
        elif in_flight == 0:
            done.set()

    warmup = min(1.0, seconds / 2)
    now = time.monotonic_ns()
    window["t0"], window["t1"] = now + int(warmup * 1e9), now + int((warmup + seconds) * 1e9)
    meter = shop.meter()
    meter.start()
    for _ in range(size):
        fire()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), warmup + seconds + 30)
    await meter.stop()
    pool.close()
    return {
        "connections": size,
        "seconds": seconds,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "latency": percentiles(latencies),
        "errors": dict(errors),
        "reconnects": pool.reconnects,
        "cpu_pct": meter.pct(window["t0"], window["t1"]),
    }


async def run_burst(
    shop: Shop, buyers: list[Buyer], quantity: int, rng: random.Random
) -> dict[str, Any]:
    args = shop.args
    run = ClaimRun(shop.server.port, HttpPool(shop.server.port, 0))
    ws = await connect_ws(shop, buyers, run.listen)
    print(f"    {ws['sockets']} websockets up in {ws['seconds']}s ({ws['failed']} failed)")
    run.offer_id = await shop.launch_offer(quantity)
    run.pool = pool = HttpPool(shop.server.port, http_pool_size(buyers))
    pool_seconds = await pool.open()  # just before firing: uvicorn drops idle ones after 5 s
    await asyncio.sleep(0.5)  # offer.started has reached every socket
    spy, spy_out = None, shop.workdir / "spy-burst.txt"
    if args.profile:
        spy = await profile.record(shop.server.pid, SPY_MAX_SECONDS, spy_out)
    with no_generator_gc():
        fired_ms, end, cpu = await fire_burst(run, buyers, shop, rng)
    hot = None
    if spy is not None:
        hot = await stop_spy(spy, spy_out)
    close_ws(buyers)
    pool.close()
    return {
        "fired_in_ms": round(fired_ms, 1),
        "wait_end": end,
        "cpu_pct": cpu,
        "profile": hot,
        **await burst_report(shop, run, buyers, quantity, ws, pool, pool_seconds),
    }


async def fire_burst(
    run: ClaimRun, buyers: list[Buyer], shop: Shop, rng: random.Random
) -> tuple[float, str, dict[str, float]]:
    """Every buyer's first claim (and the concurrent retries) at once, then every answer."""
    args = shop.args
    meter = shop.meter()
    meter.start()
    window_ns = int(args.burst_window * 1e9)
    schedule = sorted((rng.randrange(window_ns + 1), i) for i in range(len(buyers)))
    start = time.monotonic_ns()
    for offset, i in schedule:
        due = start + offset
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0.001:
            await asyncio.sleep(delay)
        buyer = buyers[i]
        run.send(buyer, "primary")
        if buyer.retry == "concurrent":
            run.send(buyer, "retry_concurrent")
    fired_ms = (time.monotonic_ns() - start) / 1e6
    end = await run.wait(idle_s=args.idle_wait, max_s=120)
    await meter.stop()
    return fired_ms, end, meter.pct(run.first_send_ns, run.last_answer_ns)


async def burst_report(
    shop: Shop,
    run: ClaimRun,
    buyers: list[Buyer],
    quantity: int,
    ws: dict[str, Any],
    pool: HttpPool,
    pool_seconds: float,
) -> dict[str, Any]:
    offer_id = run.offer_id
    return {
        "offer_id": offer_id,
        "buyers": len(buyers),
        "quantity": quantity,
        "websockets": ws,
        "http_connections": pool.size,
        "http_connect_s": round(pool_seconds, 2),
        "claims": summarize_claims(run),
        "retries": retry_consistency(run.claims, run.orders_by_key),
        "http_reconnects": pool.reconnects,
        "http_resent": pool.resent,
        **await stores_after(shop, run, quantity),
        "unanswered": unanswered(run.claims),
        "error_examples": [
            {"via": c.buyer.via, "kind": c.kind, "outcome": c.outcome, "detail": c.detail}
            for c in run.claims
            if c.outcome not in ("", "order", "sold_out")
        ][:10],
    }


async def stores_after(shop: Shop, run: ClaimRun, quantity: int) -> dict[str, Any]:
    """What MongoDB and Redis hold for the run's offer once it is over, judged against what
    the buyers were told and the offer's own per-user limit."""
    terms = await shop.offer_terms(run.offer_id)
    limit = terms["per_user_limit"]
    mongo = await verify_orders(shop.mongodb_url, run.offer_id, quantity, limit, run.told)
    redis = await redis_state(shop.redis_url, run.offer_id)
    return {"mongo": mongo, "redis": redis, "stock": stock_balance(mongo, redis, quantity)}


async def run_paced(
    shop: Shop, n: int, rate: float, pool_size: int, rng: random.Random
) -> dict[str, Any]:
    """n claims on an offer of n units, one every 1/rate seconds, alternating transports: every
    claim succeeds, so each one costs the full path (reservation, order, notification)."""
    args = shop.args
    buyers = make_buyers("paced", n, 0.0, rng)
    # With --servers, buyers are spread over the processes as a load balancer would.
    ports = [shop.server.port, *(server.port for server in shop.more_servers)]
    for i, buyer in enumerate(buyers):
        buyer.port = ports[i % len(ports)]
    run = ClaimRun(shop.server.port, HttpPool(shop.server.port, 0))
    ws = await connect_ws(shop, buyers, run.listen)
    print(f"    {ws['sockets']} websockets up in {ws['seconds']}s ({ws['failed']} failed)")
    offer_id = run.offer_id = await shop.launch_offer(n)
    each = max(1, pool_size // len(ports))
    run.pool = pool = HttpPool(shop.server.port, each)
    run.other_pools = {port: HttpPool(port, each) for port in ports[1:]}
    for one in (pool, *run.other_pools.values()):
        await one.open()
    await asyncio.sleep(0.5)
    spy, spy_out = None, shop.workdir / f"spy-paced-{rate:g}.txt"
    if args.profile:
        spy = await profile.record(shop.server.pid, SPY_MAX_SECONDS, spy_out)
    meter = shop.meter()
    interval_ns = int(1e9 / rate)
    behind_ms = 0.0
    with no_generator_gc():
        meter.start()
        start = time.monotonic_ns() + 1_000_000
        for i, buyer in enumerate(buyers):
            due = start + i * interval_ns
            now = time.monotonic_ns()
            if due > now + 500_000:
                await asyncio.sleep((due - now) / 1e9)
            behind_ms = max(behind_ms, (time.monotonic_ns() - due) / 1e6)
            run.send(buyer, "primary", due_ns=due)
        send_s = (time.monotonic_ns() - start) / 1e9
        end = await run.wait(idle_s=args.idle_wait, max_s=120)
        await meter.stop()
    cpu = meter.pct(run.first_send_ns, run.last_answer_ns)
    # Every server process in one column: % of one core, so above 100 with --servers.
    cpu["server"] = round(sum(v for k, v in cpu.items() if k.startswith("server")), 1)
    pools = (pool, *run.other_pools.values())
    hot = None
    if spy is not None:
        hot = await stop_spy(spy, spy_out)
    close_ws(buyers)
    for one in pools:
        one.close()
    stores = await stores_after(shop, run, n)
    return {
        "offer_id": offer_id,
        "claims_offered": n,
        "offered_rate": rate,
        "achieved_send_rate": round(n / max(send_s, 1e-9), 1),
        "generator_max_behind_ms": round(behind_ms, 1),
        "websockets": ws,
        "http_connections": pool_size,
        "server_processes": len(ports),
        "wait_end": end,
        "claims": summarize_claims(run),
        "http_reconnects": sum(one.reconnects for one in pools),
        "http_resent": sum(one.resent for one in pools),
        "cpu_pct": cpu,
        **stores,
        "profile": hot,
        "error_examples": [
            {"via": c.buyer.via, "outcome": c.outcome, "detail": c.detail}
            for c in run.claims
            if c.outcome not in ("", "order")
        ][:10],
    }


async def run_redis_limit(shop: Shop, n: int, quantity: int, min_s: float) -> dict[str, Any]:
    """The reservation script alone: n concurrent `claim` calls straight from redis-py (the
    server's adapter and pool of 64 connections) on fresh offers of `quantity` units. A first
    round warms the pool and loads the script; then rounds until `min_s` seconds are measured."""
    store = RedisStockReservations(shop.redis_url)
    rounds: list[dict[str, Any]] = []
    meter = shop.meter()

    async def one_round(r: int) -> dict[str, Any]:
        offer_id = f"bench-redis-{time.time_ns()}-{r}"
        now = datetime.now(UTC)
        await store.open_offer(
            offer_id,
            quantity=quantity,
            per_user_limit=1,
            starts_at=now - timedelta(seconds=1),
            ends_at=now + timedelta(minutes=5),
        )
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(store.claim(offer_id, f"r-{i}", 1, f"r-{i}:k", now) for i in range(n))
        )
        seconds = time.perf_counter() - t0
        outcomes = collections.Counter(res.outcome.value for res in results)
        return {
            "seconds": round(seconds, 4),
            "claims_per_s": round(n / seconds, 1),
            "outcomes": dict(outcomes),
            "reserved_ok": outcomes[ClaimOutcome.RESERVED.value] == quantity,
        }

    try:
        await one_round(-1)
        meter.start()
        measured = 0.0
        while measured < min_s or len(rounds) < 3:
            rounds.append(await one_round(len(rounds)))
            measured += rounds[-1]["seconds"]
        await meter.stop()
    finally:
        await store.close()
    rates = sorted(r["claims_per_s"] for r in rounds)
    return {
        "claims": n,
        "quantity": quantity,
        "rounds": len(rounds),
        "claims_per_s": rates[len(rates) // 2],  # the median round
        "every_round_reserved_exactly_q": all(r["reserved_ok"] for r in rounds),
        "cpu_pct": meter.pct(),
        "round_rates": rates,
    }
