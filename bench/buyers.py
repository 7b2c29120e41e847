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
    status: str | None = None  # the order's status in the answer
    ref: str = ""  # a websocket claim's own `ref`, which its `error` frame echoes
    detail: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.answered_ns - self.due_ns) / 1e6


class ClaimRun:
    """Sends claims over both transports and matches every answer to its claim.

    A websocket claim's `error` frame is matched by the claim's own `ref`, and must come on the
    socket that sent it. Its `order.updated` carries the claim's `idempotency_key`: it answers
    the oldest unanswered claim with that key on the socket it reached. A buyer's order reaches
    all their sockets, so the twin of a concurrent retry may hear the first claim's order
    before its own answer; every order id heard for a (buyer, key), over either transport and
    on any socket, is kept in `orders_by_key`, and more than one there is a broken promise."""

    def __init__(self, port: int, pool: HttpPool) -> None:
        self.port, self.pool = port, pool
        self.offer_id = ""  # set once the offer is launched, after the sockets are up
        self.other_pools: dict[int, HttpPool] = {}  # buyers on other processes (--servers)
        self.claims: list[Claim] = []
        self.answered = 0
        self.last_answer_ns = 0
        self.first_send_ns = 0
        # Websocket frames that answered no claim: "copy" (an order already answered on that
        # socket, e.g. the twin's), "stray_order" (a key no claim of the socket's owner used),
        # "stray_error" (a ref no claim on that socket has, or one answered already),
        # "other_offer".
        self.unmatched_ws_frames: collections.Counter[str] = collections.Counter()
        self.orders_by_key: dict[tuple[str, str], set[str]] = {}
        self._keys: set[tuple[str, str]] = set()
        self._by_ref: dict[str, tuple[WsClient, Claim]] = {}
        self._owner: dict[WsClient, str] = {}  # whose socket it is
        self._waiting: dict[tuple[WsClient, str], collections.deque[Claim]] = {}
        self._changed = asyncio.Event()

    # Sending ----------------------------------------------------------------------------------

    def send(self, buyer: Buyer, kind: str, due_ns: int | None = None) -> Claim:
        claim = Claim(buyer, kind, self.offer_id)
        self.claims.append(claim)
        claim.sent_ns = time.monotonic_ns()
        claim.due_ns = claim.sent_ns if due_ns is None else due_ns
        if not self.first_send_ns:
            self.first_send_ns = claim.sent_ns
        self._keys.add((buyer.user_id, buyer.key))
        if buyer.via == "ws":
            client = buyer.ws_twin if kind == "retry_concurrent" else buyer.ws
            assert client is not None
            self._owner[client] = buyer.user_id
            claim.ref = f"c{len(self.claims)}"
            self._by_ref[claim.ref] = (client, claim)
            self._waiting.setdefault((client, buyer.key), collections.deque()).append(claim)
            frame = {
                "type": "offer.claim",
                "offer_id": self.offer_id,
                "quantity": 1,
                "idempotency_key": buyer.key,
                "shipping_address": ADDRESS,
                "ref": claim.ref,
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
        first = not claim.outcome
        claim.outcome, claim.answered_ns, claim.order_id = outcome, at_ns, order_id
        self.last_answer_ns = max(self.last_answer_ns, at_ns)
        if not first:  # an error frame by ref after an order taken by key: see _on_ws
            return
        self.answered += 1
        self._changed.set()
        buyer = claim.buyer
        if claim.kind == "primary" and buyer.retry == "after":
            self.send(buyer, "retry_after")

    def _heard(self, buyer_id: str, key: str, order_id: str) -> None:
        self.orders_by_key.setdefault((buyer_id, key), set()).add(order_id)

    @property
    def told(self) -> set[str]:
        """Every order id a buyer heard: in a 201, or in an `order.updated` on their socket."""
        return set().union(*self.orders_by_key.values())

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
            claim.status = str(body.get("status"))
            self._heard(claim.buyer.user_id, claim.buyer.key, str(body.get("id")))
            self._answer(claim, "order", answer.at_ns, str(body.get("id")))
        else:
            claim.detail = answer.body[:300].decode(errors="replace")
            code = body.get("code") if isinstance(body, dict) else None
            self._answer(claim, str(code or f"http_{answer.status}"), answer.at_ns)

    def _on_ws(self, client: WsClient, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"type":"order.updated"'):
            order = json.loads(payload)["order"]
            if order.get("offer_id") != self.offer_id:
                self.unmatched_ws_frames["other_offer"] += 1
                return
            buyer_id, key = str(order.get("buyer_id")), str(order.get("idempotency_key"))
            self._heard(buyer_id, key, str(order["id"]))
            waiting = self._waiting.get((client, key))
            if not waiting:
                known = (buyer_id, key) in self._keys and self._owner.get(client) == buyer_id
                self.unmatched_ws_frames["copy" if known else "stray_order"] += 1
                return
            claim = waiting.popleft()
            claim.status = str(order.get("status"))
            self._answer(claim, "order", now, str(order["id"]))
        elif payload.startswith(b'{"type":"error"'):
            frame = json.loads(payload)
            ref = str(frame.get("ref"))
            sent = self._by_ref.get(ref)
            if sent is None or sent[0] is not client:
                self.unmatched_ws_frames["stray_error"] += 1
                return
            del self._by_ref[ref]  # a second error for it would be stray
            claim = sent[1]
            waiting = self._waiting.get((client, claim.buyer.key))
            if waiting and claim in waiting:
                waiting.remove(claim)
            elif claim.outcome:
                # Its key's order came first, from another of the buyer's sockets: the refusal,
                # named by ref, is this claim's answer, and disagrees with that order.
                claim.detail = f"refused after order {claim.order_id} was heard for its key; "
            claim.detail += str(frame.get("message", ""))[:200]
            claim.status = None
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

    async def offer_terms(self, offer_id: str) -> dict[str, Any]:
        """The offer as the server holds it (quantity, per_user_limit): what checks judge by."""
        offer: dict[str, Any] = await self.call("GET", f"/offers/{offer_id}")
        return offer

    def meter(self) -> CpuMeter:
        return CpuMeter(self.meter_processes)
