"""Flash-sale benchmark: B buyers claim one offer of Q units in the same instant.

Half the buyers sit on room websockets (connected beforehand), half claim over HTTP on
keep-alive connections. 10% retry with the same idempotency key: half concurrently (from a
second socket or connection of the same user), half once they have their answer. In the same
run, against the same valkey, mongod and `liveshop serve`:

- the no-op limit: `GET /healthz` on the same server stack, closed loop, same HTTP concurrency;
- the Redis limit: `RedisStockReservations` straight against valkey, B concurrent `claim` calls
  on a fresh offer of Q units (redis-py's pool of 64 connections keeps them in flight);
- a paced run: N claims on an offer of N units, offered at a steady 1,000 claims/s, for p99
  (`--sweep 100,250,500` adds the same run at lower rates, to find the knee).

Afterwards MongoDB is the judge: units sold (orders pending payment for the offer) must equal
Q, nothing oversold, one order per (buyer, idempotency key), at most one order per buyer.

    .venv/bin/python -m bench.flashsale             # B=2000, Q=500, paced 3,000 at 1,000/s
    .venv/bin/python -m bench.flashsale --quick     # B=400, Q=100, paced 1,000 at 1,000/s
    .venv/bin/python -m bench.flashsale --profile   # also py-spy the server (burst, paced)
    .venv/bin/python -m bench.flashsale --sweep 100,250,500 --commit HEAD   # see docs/flashsale.md

Latency is send to answer (HTTP: the response; websocket: `order.updated` or the `error` frame
whose `ref` is the key), on CLOCK_MONOTONIC; in the paced run it counts from the time a claim
was due, so a generator or pool that falls behind is not hidden (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from pymongo import AsyncMongoClient

from bench import profile
from bench.fanout import code_version, export_commit, machine, own_cpu
from bench.servers import Child, http, raise_fd_limit, start_liveshop, start_valkey
from bench.wsclient import LiveshopClient, WsClient, open_client
from server.adapters.mongo.embedded import EmbeddedMongo
from server.adapters.redis_reservations import RedisStockReservations
from server.auth import issue_token
from server.domain.identity import Role
from server.domain.offers import ClaimOutcome
from server.domain.orders import HOLDS_STOCK

SPY_MAX_SECONDS = 300  # py-spy runs until the phase's last answer, then gets SIGINT
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECRET = "bench-only-secret-never-use-in-production"  # the bench's servers only, on loopback
HOST = "127.0.0.1"
DATABASE = "liveshop"  # LIVESHOP_MONGODB_DATABASE's default
ADDRESS = {
    "name": "A",
    "line1": "Rua 1",
    "city": "Lisboa",
    "postal_code": "1000-001",
    "country": "PT",
}
CLAIM_BODY = json.dumps({"quantity": 1, "shipping_address": ADDRESS}, separators=(",", ":"))
# The issue's targets.
CLAIMS_VS_NOOP = 0.5
PACED_P99_MS = 100.0
PACED_RATE = 1000.0


# A bare keep-alive HTTP/1.1 client ----------------------------------------------------------


@dataclass(slots=True)
class HttpAnswer:
    status: int
    head: bytes
    body: bytes
    at_ns: int

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                return value.strip().decode()
        return None


# Uvicorn closes a keep-alive connection after 5 s idle; like httpx's keepalive_expiry, the pool
# lets go of its own connections a little earlier instead of racing that close.
KEEPALIVE_EXPIRY_S = 4.0
MAX_RESENDS = 3


class ClosedBeforeAnswer(ConnectionError):
    """The server closed an idle keep-alive connection (uvicorn: after 5 s) just as a request
    went out on it: nothing of the request was answered, so sending it again is safe."""


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time. Uvicorn answers these endpoints with
    Content-Length, which is all this parses: cheap enough that the generator is not the limit."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._answering = False  # some of the current request's answer has arrived
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            kind = ConnectionError if self._answering else ClosedBeforeAnswer
            waiter.set_exception(kind("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self._buf += data
        self._answering = True
        waiter = self._waiter
        end = self._buf.find(b"\r\n\r\n")
        if waiter is None or end < 0:
            return
        head = bytes(self._buf[:end])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            self._waiter = None
            waiter.set_exception(ValueError(f"no Content-Length: {head[:200]!r}"))
            assert self.transport is not None
            self.transport.close()
            return
        stop = lower.find(b"\r\n", at + 2)
        total = end + 4 + int(lower[at + 17 : stop if stop > 0 else len(lower)])
        if len(self._buf) < total:
            return
        body = bytes(self._buf[end + 4 : total])
        del self._buf[:total]
        self._waiter = None
        waiter.set_result(HttpAnswer(int(head[9:12]), head, body, now))

    def send(self, raw: bytes) -> asyncio.Future[HttpAnswer]:
        assert self._waiter is None, "one request at a time"
        assert self.transport is not None
        waiter: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._answering = bool(self._buf)
        self.transport.write(raw)
        return waiter


class HttpPool:
    """Up to `size` keep-alive connections; a request takes the idle one that waited longest or
    queues. A connection idle for KEEPALIVE_EXPIRY_S, or closed by the server, is dropped; a new
    one is opened only when a request is waiting and the pool is below `size` (the connect then
    counts in that request's latency). A request the server's close took down unanswered is
    sent again: claims carry their idempotency key, so a resend is safe, and what a client does."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.reconnects = 0
        self.resent = 0
        self._idle: collections.deque[HttpConn] = collections.deque()
        self._backlog: collections.deque[tuple[bytes, asyncio.Future[HttpAnswer], int]] = (
            collections.deque()
        )
        self._conns: list[HttpConn] = []
        self._live = 0  # connections open or opening
        self._tasks: set[asyncio.Task[None]] = set()

    async def _connect(self) -> HttpConn:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, self.port)), 30)
            _, conn = await loop.create_connection(HttpConn, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._conns.append(conn)
        return conn

    async def open(self) -> float:
        started = time.monotonic()
        for first in range(0, self.size, 200):
            batch = range(first, min(first + 200, self.size))
            self._idle.extend(await asyncio.gather(*(self._connect() for _ in batch)))
        self._live = len(self._idle)
        return time.monotonic() - started

    def submit(self, raw: bytes) -> asyncio.Future[HttpAnswer]:
        outer: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self._backlog.append((raw, outer, 0))
        self._pump()
        return outer

    def _pump(self) -> None:
        while self._backlog and self._idle:
            conn = self._idle.popleft()
            if conn.closed or time.monotonic() - conn.idle_since > KEEPALIVE_EXPIRY_S:
                self._drop(conn)
                continue
            raw, outer, sends = self._backlog.popleft()
            conn.send(raw).add_done_callback(partial(self._done, conn, raw, outer, sends))
        if self._backlog and self._live < self.size:
            self._grow()

    def _done(
        self,
        conn: HttpConn,
        raw: bytes,
        outer: asyncio.Future[HttpAnswer],
        sends: int,
        inner: asyncio.Future[HttpAnswer],
    ) -> None:
        error = inner.exception()
        if error is None:
            outer.set_result(inner.result())
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._drop(conn)
            if isinstance(error, ClosedBeforeAnswer) and sends < MAX_RESENDS:
                self.resent += 1
                self._backlog.appendleft((raw, outer, sends + 1))
            else:
                outer.set_exception(error)
        self._pump()

    def _drop(self, conn: HttpConn) -> None:
        self._live -= 1
        if conn.transport is not None:
            conn.transport.close()

    def _grow(self) -> None:
        async def connect() -> None:
            try:
                self._idle.append(await self._connect())
                self.reconnects += 1
            except BaseException:
                self._live -= 1
                raise
            self._pump()

        self._live += 1
        task = asyncio.create_task(connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for conn in self._conns:
            if conn.transport is not None:
                conn.transport.close()


def request_bytes(
    method: str, path: str, port: int, headers: dict[str, str], body: str = ""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


# Claims and who answered them ------------------------------------------------------------------


@dataclass(slots=True)
class Buyer:
    user_id: str
    token: str
    key: str
    via: str  # "ws" or "http"
    retry: str | None = None  # None, "concurrent" or "after"
    ws: LiveshopClient | None = None
    ws_twin: LiveshopClient | None = None  # the same user's second socket (concurrent retry)


@dataclass(slots=True)
class Claim:
    buyer: Buyer
    kind: str  # "primary", "retry_concurrent" or "retry_after"
    offer_id: str
    due_ns: int = 0  # when it was meant to go: latency counts from here
    sent_ns: int = 0
    answered_ns: int = 0
    outcome: str = ""  # "order" or the error code; "" while unanswered
    order_id: str | None = None
    http_status: int = 0
    replayed: str | None = None  # HTTP's Idempotent-Replayed header
    detail: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.answered_ns - self.due_ns) / 1e6


class ClaimRun:
    """Sends claims over both transports and matches every answer to its claim."""

    def __init__(self, port: int, pool: HttpPool, offer_id: str) -> None:
        self.port, self.pool, self.offer_id = port, pool, offer_id
        self.claims: list[Claim] = []
        self.answered = 0
        self.last_answer_ns = 0
        self.first_send_ns = 0
        self.unmatched_ws_frames = 0
        self._pending: dict[WsClient, collections.deque[Claim]] = {}
        self._changed = asyncio.Event()

    # Sending ----------------------------------------------------------------------------------

    def send(self, buyer: Buyer, kind: str, due_ns: int | None = None) -> Claim:
        claim = Claim(buyer, kind, self.offer_id)
        self.claims.append(claim)
        claim.sent_ns = time.monotonic_ns()
        claim.due_ns = claim.sent_ns if due_ns is None else due_ns
        if not self.first_send_ns:
            self.first_send_ns = claim.sent_ns
        if buyer.via == "ws":
            client = buyer.ws_twin if kind == "retry_concurrent" else buyer.ws
            assert client is not None
            self._pending.setdefault(client, collections.deque()).append(claim)
            frame = {
                "type": "offer.claim",
                "offer_id": self.offer_id,
                "quantity": 1,
                "idempotency_key": buyer.key,
                "shipping_address": ADDRESS,
            }
            client.send_text(json.dumps(frame, separators=(",", ":")))
        else:
            headers = {"Authorization": f"Bearer {buyer.token}", "Idempotency-Key": buyer.key}
            raw = request_bytes(
                "POST", f"/api/v1/offers/{self.offer_id}/claims", self.port, headers, CLAIM_BODY
            )
            self.pool.submit(raw).add_done_callback(partial(self._on_http, claim))
        return claim

    def listen(self, client: WsClient) -> None:
        client.on_event = self._on_ws

    # Answers ----------------------------------------------------------------------------------

    def _answer(self, claim: Claim, outcome: str, at_ns: int, order_id: str | None = None) -> None:
        claim.outcome, claim.answered_ns, claim.order_id = outcome, at_ns, order_id
        self.answered += 1
        self.last_answer_ns = max(self.last_answer_ns, at_ns)
        self._changed.set()
        buyer = claim.buyer
        if claim.kind == "primary" and buyer.retry == "after":
            self.send(buyer, "retry_after")

    def _on_http(self, claim: Claim, future: asyncio.Future[HttpAnswer]) -> None:
        error = future.exception()
        if error is not None:
            claim.detail = f"{type(error).__name__}: {error}"
            self._answer(claim, "connection_error", time.monotonic_ns())
            return
        answer = future.result()
        claim.http_status = answer.status
        claim.replayed = answer.header("idempotent-replayed")
        try:
            body = json.loads(answer.body)
        except ValueError:
            body = {}
        if answer.status == 201:
            self._answer(claim, "order", answer.at_ns, str(body.get("id")))
        else:
            claim.detail = answer.body[:300].decode(errors="replace")
            code = body.get("code") if isinstance(body, dict) else None
            self._answer(claim, str(code or f"http_{answer.status}"), answer.at_ns)

    def _on_ws(self, client: WsClient, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"type":"order.updated"'):
            order = json.loads(payload)["order"]
            pending = self._pending.get(client)
            if order.get("offer_id") != self.offer_id or not pending:
                self.unmatched_ws_frames += 1  # e.g. the twin's order reaching both sockets
                return
            self._answer(pending.popleft(), "order", now, str(order["id"]))
        elif payload.startswith(b'{"type":"error"'):
            frame = json.loads(payload)
            pending = self._pending.get(client)
            ref = frame.get("ref")
            claim = next((c for c in pending or () if c.buyer.key == ref), None)
            if claim is None or pending is None:
                self.unmatched_ws_frames += 1
                return
            pending.remove(claim)
            claim.detail = str(frame.get("message", ""))[:200]
            self._answer(claim, str(frame.get("code")), now)

    async def wait(self, *, idle_s: float, max_s: float) -> str:
        """Until every claim is answered ("complete"), none came for `idle_s` ("idle": the rest
        never will), or `max_s` passed ("deadline")."""
        deadline = time.monotonic() + max_s
        while self.answered < len(self.claims):
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return "deadline"
            try:
                await asyncio.wait_for(self._changed.wait(), min(idle_s, left))
            except TimeoutError:
                if time.monotonic() < deadline:
                    return "idle"
        return "complete"


# Figures ----------------------------------------------------------------------------------------


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(p * len(ordered) + 0.5) - 1))], 2)

    return {
        "n": len(ordered),
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1], 2),
    }


class CpuMeter:
    """CPU of each process (and of this generator), sampled every 100 ms, so a window can be cut
    to when the work happened rather than to when the bench stopped waiting."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self._samples: list[tuple[int, dict[str, float]]] = []
        self._task: asyncio.Task[None] | None = None

    def _now(self) -> tuple[int, dict[str, float]]:
        return time.monotonic_ns(), cpu_seconds(self.processes)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._samples.append(self._now())

    def start(self) -> None:
        self._samples = [self._now()]
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._samples.append(self._now())

    def pct(self, t0_ns: int | None = None, t1_ns: int | None = None) -> dict[str, float]:
        """% of one core per process between the samples around [t0, t1]."""
        samples = self._samples
        a = samples[0]
        if t0_ns is not None:
            a = max((s for s in samples if s[0] <= t0_ns), key=lambda s: s[0], default=a)
        b = samples[-1]
        if t1_ns is not None:
            b = min((s for s in samples if s[0] >= t1_ns), key=lambda s: s[0], default=b)
        return cpu_pct(a, b)


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds so far of this generator, each named process and the whole machine."""
    found = {"generator": own_cpu()}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[name] = times.user + times.system
    total = psutil.cpu_times()
    found["machine"] = total.user + total.nice + total.system  # guest time is inside user
    found["kernel_irq"] = getattr(total, "irq", 0.0) + getattr(total, "softirq", 0.0)
    found["steal"] = getattr(total, "steal", 0.0)
    return found


def cpu_pct(a: tuple[int, dict[str, float]], b: tuple[int, dict[str, float]]) -> dict[str, float]:
    """% of one core per process between two readings. "others": every other process on the
    machine meanwhile (other people's benchmarks and tests); "kernel_irq": interrupt and softirq
    time, mostly loopback TCP here; "steal": the hypervisor's."""
    window = max((b[0] - a[0]) / 1e9, 1e-9)
    pct = {k: round(100 * (v - a[1].get(k, v)) / window, 1) for k, v in b[1].items()}
    ours = sum(v for k, v in pct.items() if k not in ("machine", "kernel_irq", "steal"))
    pct["others"] = round(max(0.0, pct.get("machine", 0.0) - ours), 1)
    return pct


async def wait_quiet(processes: dict[str, psutil.Process], max_s: float, limit: float) -> float:
    """Wait (up to `max_s`) until whatever is not this bench uses under `limit` % of one core
    for three seconds running: on a shared 2-core machine, other runs skew every figure.
    Returns the foreign load last seen."""
    deadline, calm, others = time.monotonic() + max_s, 0, 0.0
    while True:
        a = (time.monotonic_ns(), cpu_seconds(processes))
        await asyncio.sleep(1.0)
        others = cpu_pct(a, (time.monotonic_ns(), cpu_seconds(processes)))["others"]
        calm = calm + 1 if others < limit else 0
        if calm >= 3 or time.monotonic() > deadline:
            return others


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
        "unmatched_ws_frames": run.unmatched_ws_frames,
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


def retry_consistency(claims: list[Claim]) -> dict[str, Any]:
    """Every answered retry must agree with its buyer's first answer. A different order, or an
    order against a refusal, is a broken promise ("order_mismatch"); one refusal code for
    another (sold_out, then offer_not_active once the sold-out offer has ended) is only noted.
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
    return {
        "order_mismatch": len(order_mismatch),
        "order_mismatch_examples": order_mismatch[:10],
        "refusal_changed": dict(refusal_changed),
        "http_replay_headers": dict(replay_headers),
        "concurrent_http_pairs_replay_headers": dict(pairs),
    }


async def verify_orders(
    mongodb_url: str, offer_id: str, quantity: int, reported: set[str]
) -> dict[str, Any]:
    """What MongoDB holds for the offer: the truth the answers are judged against."""
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
                [holding, per_buyer, {"$match": {"n": {"$gt": 1}}}]
            )
        ]
        total = await orders.count_documents({"offer_id": offer_id})
        keys = await orders.distinct("idempotency_key", {"offer_id": offer_id})
        ids = {doc["_id"] async for doc in orders.find({"offer_id": offer_id}, {"_id": 1})}
    finally:
        await client.close()
    held = sum(v["units"] for k, v in statuses.items() if k in {s.value for s in HOLDS_STOCK})
    sold = statuses.get("pending_payment", {}).get("units", 0)
    return {
        "orders": total,
        "by_status": statuses,
        "units_sold": sold,
        "units_holding_stock": held,
        "oversell": max(0, held - quantity),
        "distinct_keys": len(keys),
        "duplicate_orders": sum(d["n"] - 1 for d in duplicates),
        "duplicate_examples": [str(d["_id"]) for d in duplicates[:5]],
        "buyers_over_limit": len(over_limit),
        "orders_nobody_was_told_of": len(ids - reported),
        "orders_told_but_missing": len(reported - ids),
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


# The bench ------------------------------------------------------------------------------------


@dataclass
class Shop:
    """The bench's servers and the host's catalogue."""

    args: argparse.Namespace
    workdir: Path
    valkey: Child
    mongo: EmbeddedMongo
    server: Child
    redis_url: str
    mongodb_url: str
    host_token: str = ""
    room_id: str = ""
    meter_processes: dict[str, psutil.Process] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.server.port}/api/v1"

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, reply = await asyncio.to_thread(
            http, method, self.api + path, body, self.host_token
        )
        if status >= 300:
            raise RuntimeError(f"{method} {path} answered {status}: {reply}")
        return reply

    async def open_room(self) -> None:
        self.host_token = issue_token(
            SECRET, "bench-host", Role.HOST, name="Bench host", ttl_seconds=6 * 3600
        )
        room = await self.call("POST", "/rooms", {"title": "flash sale bench"})
        self.room_id = str(room["id"])
        await self.call("POST", f"/rooms/{self.room_id}/start", {})

    async def launch_offer(self, quantity: int) -> str:
        product = await self.call(
            "POST",
            "/products",
            {
                "title": f"Flash item x{quantity}",
                "price": {"amount": "24.90", "currency": "USD"},
                "stock": quantity,
                "images": [],
            },
        )
        offer = await self.call(
            "POST",
            f"/rooms/{self.room_id}/offers",
            {
                "product_id": product["id"],
                "price": {"amount": "9.90", "currency": "USD"},
                "quantity": quantity,
                "per_user_limit": 1,
                "countdown_seconds": 0,
                "duration_seconds": 300,
            },
        )
        return str(offer["id"])

    def meter(self) -> CpuMeter:
        return CpuMeter(self.meter_processes)


@contextlib.contextmanager
def no_generator_gc() -> Iterator[None]:
    """No garbage collection in this generator while a phase is timed: a full collection over
    thousands of claims and sockets stalls it for tens of ms, which the paced runs would count
    as latency (they time from the due moment)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def make_buyers(prefix: str, n: int, retry_share: float, rng: random.Random) -> list[Buyer]:
    buyers = []
    for i in range(n):
        user = f"{prefix}-{i:05d}"
        token = issue_token(SECRET, user, Role.SHOPPER, ttl_seconds=3600)
        buyers.append(
            Buyer(user, token, f"k-{user}-{rng.getrandbits(32):08x}", "ws" if i % 2 else "http")
        )
    retriers = rng.sample(buyers, round(n * retry_share))
    for i, buyer in enumerate(retriers):
        buyer.retry = "concurrent" if i % 2 == 0 else "after"
    rng.shuffle(buyers)
    return buyers


async def connect_ws(
    shop: Shop, buyers: list[Buyer], listener: Callable[[WsClient], None]
) -> dict[str, Any]:
    """Every websocket buyer's socket (and a twin for concurrent retriers), 100 at a time."""
    started = time.monotonic()
    wanted: list[tuple[Buyer, str]] = []
    for b in buyers:
        if b.via == "ws":
            wanted.append((b, "ws"))
            if b.retry == "concurrent":
                wanted.append((b, "ws_twin"))
    failed = 0
    for first in range(0, len(wanted), 100):
        batch = wanted[first : first + 100]
        clients = [LiveshopClient(HOST, shop.server.port, shop.room_id, b.token) for b, _ in batch]
        for client in clients:
            listener(client)
        done = await asyncio.gather(*(open_client(c) for c in clients), return_exceptions=True)
        for (buyer, slot), client, result in zip(batch, clients, done, strict=True):
            if isinstance(result, BaseException):
                failed += 1
            else:
                setattr(buyer, slot, client)
    # A buyer whose socket failed claims over HTTP instead, so no claim goes missing.
    for b in buyers:
        if b.via == "ws" and (b.ws is None or (b.retry == "concurrent" and b.ws_twin is None)):
            b.via = "http"
    return {
        "sockets": len(wanted) - failed,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 2),
    }


def close_ws(buyers: list[Buyer]) -> None:
    for b in buyers:
        for client in (b.ws, b.ws_twin):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


def http_pool_size(buyers: list[Buyer]) -> int:
    """One connection per HTTP buyer, plus one per concurrent HTTP retry: nobody queues."""
    return sum(1 + (b.retry == "concurrent") for b in buyers if b.via == "http")


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
    run = ClaimRun(shop.server.port, HttpPool(shop.server.port, 0), "")
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
    reported = {c.order_id for c in run.claims if c.outcome == "order" and c.order_id}
    offer_id = run.offer_id
    return {
        "offer_id": offer_id,
        "buyers": len(buyers),
        "quantity": quantity,
        "websockets": ws,
        "http_connections": pool.size,
        "http_connect_s": round(pool_seconds, 2),
        "claims": summarize_claims(run),
        "retries": retry_consistency(run.claims),
        "http_reconnects": pool.reconnects,
        "http_resent": pool.resent,
        "mongo": await verify_orders(shop.mongodb_url, offer_id, quantity, reported),
        "redis": await redis_state(shop.redis_url, offer_id),
        "unanswered": unanswered(run.claims),
        "error_examples": [
            {"via": c.buyer.via, "kind": c.kind, "outcome": c.outcome, "detail": c.detail}
            for c in run.claims
            if c.outcome not in ("", "order", "sold_out")
        ][:10],
    }


async def run_paced(
    shop: Shop, n: int, rate: float, pool_size: int, rng: random.Random
) -> dict[str, Any]:
    """n claims on an offer of n units, one every 1/rate seconds, alternating transports: every
    claim succeeds, so each one costs the full path (reservation, order, notification)."""
    args = shop.args
    buyers = make_buyers("paced", n, 0.0, rng)
    run = ClaimRun(shop.server.port, HttpPool(shop.server.port, 0), "")
    ws = await connect_ws(shop, buyers, run.listen)
    print(f"    {ws['sockets']} websockets up in {ws['seconds']}s ({ws['failed']} failed)")
    offer_id = run.offer_id = await shop.launch_offer(n)
    run.pool = pool = HttpPool(shop.server.port, pool_size)
    await pool.open()
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
    hot = None
    if spy is not None:
        hot = await stop_spy(spy, spy_out)
    close_ws(buyers)
    pool.close()
    reported = {c.order_id for c in run.claims if c.outcome == "order" and c.order_id}
    return {
        "offer_id": offer_id,
        "claims_offered": n,
        "offered_rate": rate,
        "achieved_send_rate": round(n / max(send_s, 1e-9), 1),
        "generator_max_behind_ms": round(behind_ms, 1),
        "websockets": ws,
        "http_connections": pool_size,
        "wait_end": end,
        "claims": summarize_claims(run),
        "http_reconnects": pool.reconnects,
        "http_resent": pool.resent,
        "cpu_pct": cpu,
        "mongo": await verify_orders(shop.mongodb_url, offer_id, n, reported),
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


# Where a profiled server spent its samples, by the library of the innermost frame that belongs
# to one: a rough bill per claim (the rest is the event loop, which uvloop runs in C, and app
# code).
LIBRARIES = (
    ("pymongo", ("pymongo/", "bson/")),
    ("redis-py", ("redis/",)),
    ("websocket frames", ("websockets/", "channels/connection.py")),
    ("HTTP (uvicorn, starlette)", ("starlette/", "uvicorn/protocols/http", "proxy_headers")),
    ("PyJWT", ("jwt/",)),
    ("pydantic", ("pydantic",)),
    ("json", ("json/",)),
)


async def stop_spy(spy: asyncio.subprocess.Process, out: Path) -> dict[str, Any]:
    """Stop py-spy once the last answer is in (it writes its samples on SIGINT) and sum up."""
    with contextlib.suppress(ProcessLookupError):
        spy.send_signal(signal.SIGINT)
    await spy.wait()
    return {**profile.summarize(out), "libraries": library_shares(out)}


def library_shares(path: Path) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            where = "event loop, asyncio, app code"
            for frame in reversed(stack.split(";")):
                hit = next((n for n, keys in LIBRARIES if any(k in frame for k in keys)), None)
                if hit is not None:
                    where = hit
                    break
            counts[where] += int(count)
    total = sum(counts.values()) or 1
    return [(name, round(100 * n / total, 1)) for name, n in counts.most_common()]


# Report -----------------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def evaluate(report: dict[str, Any]) -> list[dict[str, str]]:
    verdicts: list[dict[str, str]] = []

    def add(target: str, figure: str, ok: bool | None, kind: str = "correctness") -> None:
        verdicts.append({"target": target, "figure": figure, "verdict": _verdict(ok), "kind": kind})

    burst, noop, paced = report.get("burst"), report.get("noop"), report.get("paced")
    if burst and noop:
        claims, ceiling = burst["claims"]["answers_per_s"], noop["requests_per_s"]
        add(
            f"claims/s through one server >= {CLAIMS_VS_NOOP:g} x no-op GET /healthz req/s",
            f"{claims:.0f} vs {ceiling:.0f} req/s = {claims / max(ceiling, 1e-9):.2f}x",
            claims >= CLAIMS_VS_NOOP * ceiling,
            "speed",
        )
    if paced:
        p99 = paced["claims"]["groups"]["primary"]["latency"]["p99_ms"]
        add(
            f"p99 < {PACED_P99_MS:.0f} ms at an offered {paced['offered_rate']:.0f} claims/s",
            f"p99 {p99} ms over {paced['claims_offered']} claims "
            f"(sent at {paced['achieved_send_rate']:.0f}/s)",
            p99 is not None and p99 < PACED_P99_MS,
            "speed",
        )
    if burst:
        m = burst["mongo"]
        add(
            "units sold == Q (orders pending payment in MongoDB)",
            f"{m['units_sold']} of {burst['quantity']}",
            m["units_sold"] == burst["quantity"],
        )
        add("oversell == 0", f"{m['oversell']}", m["oversell"] == 0)
        add(
            "duplicate orders == 0 (per buyer and key)",
            f"{m['duplicate_orders']}; buyers over the limit {m['buyers_over_limit']}",
            m["duplicate_orders"] == 0 and m["buyers_over_limit"] == 0,
        )
        groups = burst["claims"]["groups"]
        outcomes = groups["all"]["outcomes"]
        failures = {
            k: v
            for k, v in outcomes.items()
            if k not in ("order", "sold_out", "offer_not_active", "unanswered")
        }
        add(
            "(bench's check) every claim answered; retries get their first answer's order",
            f"unanswered {burst['unanswered']['by_kind'] or 0}, failures {failures or 0}, "
            f"retries with another order {burst['retries']['order_mismatch']}",
            not burst["unanswered"]["total"]
            and not failures
            and not burst["retries"]["order_mismatch"],
        )
    runs = [*(report.get("paced_sweep") or []), *([paced] if paced else [])]
    if runs:
        figures, ok = [], True
        for run in runs:
            m = run["mongo"]
            figures.append(
                f"{run['offered_rate']:.0f}/s: {m['units_sold']} of {run['claims_offered']}"
            )
            ok = ok and m["units_sold"] == run["claims_offered"] == m["orders"]
            ok = ok and m["oversell"] == 0 and m["duplicate_orders"] == 0
        add("(paced) every claim an order, no oversell, no duplicates", ", ".join(figures), ok)
    return verdicts


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


CPU_COLUMNS = ("server", "mongod", "valkey", "generator", "kernel_irq", "others")


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    code = report["code"]
    dirty = " + uncommitted server changes" if code.get("server_code_modified") else ""
    print(f"\nMachine: {m['cpus']} cores, {m['cpu_model']}, Python {m['python']}")
    print(f"Liveshop: `liveshop serve`, commit {code['commit']}{dirty}: {code['subject']}")
    head = f"{'phase':<36}{'n':>6}{'answers/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  "
    head += "".join(f"{name[:6]:>7}" for name in CPU_COLUMNS)
    print("\n" + " " * 89 + "CPU, % of one core")
    print(head + "\n" + "-" * len(head))

    def row(
        name: str, n: int, rate: float | None, lat: dict[str, Any], cpu: dict[str, float] | None
    ) -> None:
        cells = "".join(f"{cpu.get(k, 0):>6.0f}%" for k in CPU_COLUMNS) if cpu else ""
        print(
            f"{name:<36}{n:>6}{'-' if rate is None else f'{rate:.0f}':>10}"
            f"{_ms(lat.get('p50_ms')):>9}{_ms(lat.get('p99_ms')):>9}{_ms(lat.get('max_ms')):>9}"
            f"  {cells}"
        )

    noop, burst, paced = report.get("noop"), report.get("burst"), report.get("paced")
    if noop:
        name = f"no-op GET /healthz, {noop['connections']} conns"
        row(name, noop["requests"], noop["requests_per_s"], noop["latency"], noop["cpu_pct"])
    if burst:
        c = burst["claims"]
        groups = c["groups"]
        row(
            "burst: every answer",
            c["answers"],
            c["answers_per_s"],
            groups["all"]["latency"],
            burst["cpu_pct"],
        )
        for name in ("primary", "primary_ws", "primary_http", "retry_concurrent", "retry_after"):
            rate = c["primary_answers_per_s"] if name == "primary" else None
            row(f"  {name}", groups[name]["sent"], rate, groups[name]["latency"], None)
    for run in report.get("paced_sweep") or []:
        c = run["claims"]
        name = f"paced {run['offered_rate']:.0f}/s, every claim an order"
        row(
            name,
            c["answers"],
            c["answers_per_s"],
            c["groups"]["primary"]["latency"],
            run["cpu_pct"],
        )
    if paced:
        c = paced["claims"]
        name = f"paced {paced['offered_rate']:.0f}/s, every claim an order"
        row(
            name,
            c["answers"],
            c["answers_per_s"],
            c["groups"]["primary"]["latency"],
            paced["cpu_pct"],
        )
        for name in ("primary_ws", "primary_http"):
            row(f"  {name}", c["groups"][name]["sent"], None, c["groups"][name]["latency"], None)
    redis = report.get("redis_limit")
    if redis:
        row(
            "Redis script alone (redis-py, 64 conns)",
            redis["claims"],
            redis["claims_per_s"],
            {},
            redis["cpu_pct"],
        )
    if burst and noop and redis:
        rate = burst["claims"]["answers_per_s"]
        print(
            f"\nBurst claims/s over the limits: / no-op req/s = "
            f"{rate / max(noop['requests_per_s'], 1e-9):.3f}, / Redis script alone = "
            f"{rate / max(redis['claims_per_s'], 1e-9):.3f}"
        )
    if burst:
        mg, rd = burst["mongo"], burst["redis"]
        print(
            f"\nBurst: {burst['buyers']} buyers ({burst['websockets']['sockets']} sockets, "
            f"{burst['http_connections']} HTTP connections), {burst['quantity']} units, fired in "
            f"{burst['fired_in_ms']} ms; outcomes {burst['claims']['groups']['all']['outcomes']}"
        )
        print(f"Unanswered: {burst['unanswered']}")
        print(
            f"MongoDB: {mg['orders']} orders {mg['by_status']}, units sold {mg['units_sold']}, "
            f"oversell {mg['oversell']}, duplicates {mg['duplicate_orders']}, buyers over limit "
            f"{mg['buyers_over_limit']}, orders nobody was told of "
            f"{mg['orders_nobody_was_told_of']}"
        )
        retries = burst["retries"]
        print(f"Redis after the burst: {rd}")
        print(
            f"Retries: another order than the first answer {retries['order_mismatch']}; "
            f"refusal code changed {retries['refusal_changed']}; HTTP Idempotent-Replayed on "
            f"concurrent pairs {retries['concurrent_http_pairs_replay_headers']}"
        )
    foreign = report.get("foreign_load_pct")
    if foreign:
        print(f"Other processes' load before each phase (% of a core): {foreign}")
    logs = report.get("server_log", {})
    if logs.get("levels"):
        print(f"Server log levels: {logs['levels']}; events: {logs['events']}")
    for key in ("burst", "paced"):
        hot = (report.get(key) or {}).get("profile")
        if hot:
            print(f"\npy-spy, {key}: server samples by library; top self time")
            for name, share in hot["libraries"]:
                print(f"  {share:5.1f}%  {name}")
            print("  --")
            for name, share in hot["self"][:8]:
                print(f"  {share:5.1f}%  {name}")
    if report.get("error"):
        print(f"\nRUN FAILED: {report['error']}\nServer log tail:\n{report.get('server_log_tail')}")
    print("\nTargets")
    for v in report["targets"]:
        print(f"  {v['verdict']:<5} {v['target']}: {v['figure']}")


# Main -----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    code = code_version(args.commit)  # at the start: others may commit while this runs
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.monotonic()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.flashsale", *sys.argv[1:]]),
        "machine": machine(),
        "code": code,
        "load_average_before": list(psutil.getloadavg()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="liveshop-flash-") as tmp:
        workdir = Path(tmp)
        if args.keep_logs:
            workdir = args.out_dir / f"flash-logs-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
            workdir.mkdir(parents=True)
        valkey = await start_valkey(workdir)
        mongo = EmbeddedMongo(Path(tmp) / "mongodb")  # never kept: tens of MB
        server: Child | None = None
        try:
            mongodb_url = await mongo.start()
            redis_url = f"redis://{HOST}:{valkey.port}/0"
            source = export_commit(args.commit, Path(tmp) / "src") if args.commit else None
            server = await start_liveshop(
                workdir,
                redis_url=redis_url,
                mongodb_url=mongodb_url,
                secret=SECRET,
                source=source,
            )
            shop = Shop(args, workdir, valkey, mongo, server, redis_url, mongodb_url)
            shop.meter_processes = {"server": server.ps(), "valkey": valkey.ps()}
            if mongo.pid is not None:
                shop.meter_processes["mongod"] = psutil.Process(mongo.pid)
            await shop.open_room()
            b, q = args.buyers, args.quantity
            buyers = make_buyers("burst", b, args.retry_share, rng)
            http_conns = http_pool_size(buyers)

            report["foreign_load_pct"] = {}

            async def phase(key: str, what: str) -> None:
                others = await wait_quiet(shop.meter_processes, args.quiet_wait, args.quiet_limit)
                report["foreign_load_pct"][key] = others
                note = f" (other processes at {others:.0f}% of a core)" if others > 5 else ""
                print(f"[{time.monotonic() - started:6.1f}s] {what}{note}")

            await phase(
                "noop", f"no-op: GET /healthz, {http_conns} connections, {args.noop_seconds}s"
            )
            report["noop"] = await run_noop(shop, http_conns, args.noop_seconds)
            await phase("burst", f"burst: {b} buyers, {q} units")
            report["burst"] = await run_burst(shop, buyers, q, rng)
            report["paced_sweep"] = []
            for rate in args.paced_rates:
                n = args.paced  # the same claims (and room size) at every rate
                await phase(f"paced-{rate:g}", f"paced: {n} claims at {rate:.0f}/s")
                paced = await run_paced(shop, n, rate, http_conns, rng)
                if rate == args.paced_rate:
                    report["paced"] = paced
                else:
                    report["paced_sweep"].append(paced)
            await phase("redis", f"Redis limit: {b} claims on {q} units straight against valkey")
            report["redis_limit"] = await run_redis_limit(shop, b, q, args.redis_seconds)
        except Exception as exc:  # a crash is a finding: keep what was measured, and the log
            report["error"] = f"{type(exc).__name__}: {exc}"
            print(f"FAILED: {report['error']}")
        finally:
            if server is not None:
                report["server_alive_at_end"] = server.alive()
                report["server_log"] = server_log_summary(server)
                report["server_log_tail"] = server.log_tail(40)
                await server.stop()
            await mongo.stop()
            await valkey.stop()
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    report["targets"] = evaluate(report)
    stamp_ = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out_dir / f"flashsale-{stamp_}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"\nJSON: {out}")
    # Speed targets missed are figures to explain; a correctness miss fails the command.
    broken = [v for v in report["targets"] if v["kind"] == "correctness" and v["verdict"] == "MISS"]
    return 1 if broken or "error" in report or not report.get("server_alive_at_end") else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--buyers", type=int, help="B, buyers in the burst (2000)")
    parser.add_argument("--quantity", type=int, help="Q, units of the burst's offer (500)")
    parser.add_argument("--retry-share", type=float, default=0.10, help="buyers who retry (0.10)")
    parser.add_argument(
        "--burst-window",
        type=float,
        default=0.0,
        help="seconds over which the burst's first claims are spread at random (0: all at once)",
    )
    parser.add_argument("--paced", type=int, help="claims in the paced run (3000)")
    parser.add_argument("--paced-rate", type=float, default=PACED_RATE, help="claims/s (1000)")
    parser.add_argument(
        "--sweep",
        default="",
        help="also paced runs at these claims/s, e.g. 100,250,500 (same number of claims)",
    )
    parser.add_argument("--noop-seconds", type=float, help="measured seconds of /healthz (5)")
    parser.add_argument(
        "--redis-seconds", type=float, default=2.0, help="measured seconds of the Redis limit (2)"
    )
    parser.add_argument(
        "--idle-wait", type=float, default=5.0, help="give up on answers after this long with none"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each phase, wait up to this long for other processes to calm down (300)",
    )
    parser.add_argument(
        "--quiet-limit", type=float, default=15.0, help="calm: others under this %% of a core"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server (burst, paced)")
    parser.add_argument(
        "--commit", help="run the server from this commit (git archive), not the working tree"
    )
    parser.add_argument("--keep-logs", action="store_true", help="server logs under --out-dir")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.buyers = args.buyers or (400 if args.quick else 2000)
    args.quantity = args.quantity or (100 if args.quick else 500)
    args.paced = args.paced or (1000 if args.quick else 3000)
    extra = [float(rate) for rate in args.sweep.split(",") if rate.strip()]
    args.paced_rates = sorted({*extra, args.paced_rate})
    args.noop_seconds = args.noop_seconds or (2.0 if args.quick else 5.0)
    return args


def main(argv: list[str] | None = None) -> int:
    raise_fd_limit()
    args = parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return int(runner(main_async(args)))


if __name__ == "__main__":
    sys.exit(main())
