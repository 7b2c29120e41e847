"""The flash sale's shop and buyers: claims over websockets and HTTP, and the run that
collects the answers."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.cpu import CpuMeter
from bench.httpload import HOST, HttpAnswer, HttpPool, request_bytes
from bench.runinfo import SECRET
from bench.servers import Child, http
from bench.wsclient import LiveshopClient, WsClient, open_client
from server.adapters.mongo.embedded import EmbeddedMongo
from server.auth import issue_token
from server.domain.identity import Role

DATABASE = "liveshop"  # LIVESHOP_MONGODB_DATABASE's default
ADDRESS = {
    "name": "A",
    "line1": "Rua 1",
    "city": "Lisboa",
    "postal_code": "1000-001",
    "country": "PT",
}
CLAIM_BODY = json.dumps({"quantity": 1, "shipping_address": ADDRESS}, separators=(",", ":"))


@dataclass(slots=True)
class Buyer:
    user_id: str
    token: str
    key: str
    via: str  # "ws" or "http"
    retry: str | None = None  # None, "concurrent" or "after"
    ws: LiveshopClient | None = None
    ws_twin: LiveshopClient | None = None  # the same user's second socket (concurrent retry)
    port: int | None = None  # the server process this buyer uses (--servers); None: the first


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
    replayed: str | None = None  # HTTP's Idempotent-Replayed header
    detail: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.answered_ns - self.due_ns) / 1e6


class ClaimRun:
    """Sends claims over both transports and matches every answer to its claim."""

    def __init__(self, port: int, pool: HttpPool) -> None:
        self.port, self.pool = port, pool
        self.offer_id = ""  # set once the offer is launched, after the sockets are up
        self.other_pools: dict[int, HttpPool] = {}  # buyers on other processes (--servers)
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
            port = buyer.port or self.port
            raw = request_bytes(
                "POST", f"/api/v1/offers/{self.offer_id}/claims", port, headers, CLAIM_BODY
            )
            pool = self.pool if port == self.port else self.other_pools[port]
            pool.submit(raw).add_done_callback(partial(self._on_http, claim))
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
        clients = [
            LiveshopClient(HOST, b.port or shop.server.port, shop.room_id, b.token)
            for b, _ in batch
        ]
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
    more_servers: list[Child] = field(default_factory=list)  # --servers beyond the first
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

    async def launch_offer(
        self, quantity: int, *, per_user_limit: int = 1, duration_seconds: int = 300
    ) -> str:
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
                "per_user_limit": per_user_limit,
                "countdown_seconds": 0,
                "duration_seconds": duration_seconds,
            },
        )
        return str(offer["id"])

    def meter(self) -> CpuMeter:
        return CpuMeter(self.meter_processes)
