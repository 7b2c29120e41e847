"""What one claim costs the server, against one no-op request, in the steady state.

The flash-sale burst lasts under a second on a machine whose speed drifts by a third within the
hour, so its ratio to the no-op moves by as much from run to run. This measures the parts apart,
each in a closed loop long enough to be steady, as CPU seconds of the server process per answer:

- the no-op: `GET /healthz` over HTTP, the stack's own cost;
- a refused claim (the offer is sold out) and a claim that becomes an order, each over HTTP and
  over a room's websocket. Every claim is a new buyer over HTTP (a new token, as in the burst);
  on a websocket each buyer claims again and again with new keys (the offer's per-user limit is
  1,000);
- a websocket's `ping` answered with `pong`: the websocket's own cost;
- the HTTP refusal step by step, from claims the endpoint refuses at each of its checks in turn:
  no token (the stack, the route and a problem answer), then a new buyer's valid token without
  an idempotency key (+ the token's check), then a key and a body whose country does not exist
  (+ reading the body and checking the address); the sold-out refusal adds the reservation
  script.

From these it works out the best ratio to the no-op that a burst of B claims on Q units (half
over each transport) could reach: B no-op requests' CPU over that of Q orders and B - Q
refusals. The burst does more than this (retries, `offer.stock` to every viewer, the end), so
it only comes out lower.

    .venv/bin/python -m bench.claimcost                  # ~1 min
    .venv/bin/python -m bench.claimcost --commit 0ed6a72 # the server as of a commit
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/claimcost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.buyers import ADDRESS, CLAIM_BODY, Shop
from bench.httpload import HOST, HttpAnswer, HttpPool, request_bytes
from bench.runinfo import (
    RESULTS_DIR,
    SECRET,
    code_version,
    export_commit,
    machine,
    run_main,
)
from bench.servers import start_liveshop, start_valkey
from bench.wsclient import LiveshopClient, WsClient, open_client
from server.adapters.mongo.embedded import EmbeddedMongo
from server.auth import issue_token
from server.domain.identity import Role

BIG_OFFER = 1_000_000  # units: never sells out within a phase
# A socket may send 20 frames a second (channels/protocol.py), so each waits this long between
# its frames, and there are enough sockets that claims and pings at the server's pace fit.
MIN_SEND_INTERVAL = 1 / 18
PING_SOCKETS = 2048
PER_USER_LIMIT = 1000  # the most an offer allows: websocket buyers claim again and again


class ClosedLoop:
    """Keeps `width` requests in flight for `seconds`; counts answers and the server's CPU."""

    def __init__(self, server: psutil.Process, seconds: float) -> None:
        self.server, self.seconds = server, seconds
        self.answers = 0
        self.outcomes: Counter[str] = Counter()
        self._until = 0.0

    @property
    def running(self) -> bool:
        return time.monotonic() < self._until

    def answered(self, outcome: str) -> None:
        self.answers += 1
        self.outcomes[outcome] += 1

    async def run(self, start: Callable[[], None]) -> dict[str, Any]:
        gc.collect()
        gc.disable()  # a full collection in this generator would stall the loop for tens of ms
        try:
            before, started = self.server.cpu_times(), time.monotonic()
            self._until = started + self.seconds
            start()
            await asyncio.sleep(self.seconds)
            after, ended, answers = self.server.cpu_times(), time.monotonic(), self.answers
            await asyncio.sleep(1.0)  # the last answers land before the next phase starts
        finally:
            gc.enable()
        cpu = (after.user + after.system) - (before.user + before.system)
        return {
            "answers": answers,
            "answers_per_s": round(answers / (ended - started), 1),
            "server_cpu_pct": round(100 * cpu / (ended - started), 1),
            "server_cpu_us_per_answer": round(1e6 * cpu / max(answers, 1), 1),
            "outcomes": dict(self.outcomes),
        }


async def http_phase(
    pool: HttpPool, requests: Callable[[], bytes], loop: ClosedLoop, expected: int
) -> dict[str, Any]:
    def send() -> None:
        pool.submit(requests()).add_done_callback(landed)

    def landed(future: asyncio.Future[HttpAnswer]) -> None:
        error = future.exception()
        status = type(error).__name__ if error else future.result().status
        loop.answered("expected" if status == expected else f"unexpected_{status}")
        if loop.running:
            send()

    def start() -> None:
        for _ in range(pool.size):
            send()

    return await loop.run(start)


async def ws_phase(
    clients: list[WsClient], offer_id: str | None, loop: ClosedLoop
) -> dict[str, Any]:
    """Each socket claims `offer_id` again and again with new keys; with None, it pings."""
    keys = itertools.count()
    last_sent: dict[int, float] = {}  # by id(client)

    def send(client: WsClient) -> None:
        last_sent[id(client)] = time.monotonic()
        frame: dict[str, Any] = {"type": "ping", "ref": f"p{next(keys)}"}
        if offer_id is not None:
            frame = {
                "type": "offer.claim",
                "offer_id": offer_id,
                "quantity": 1,
                "idempotency_key": f"k{next(keys)}",
                "shipping_address": ADDRESS,
            }
        client.send_text(json.dumps(frame, separators=(",", ":")))

    def on_event(client: WsClient, payload: bytes, _: int) -> None:
        if payload.startswith(b'{"type":"order.updated"'):
            loop.answered("order")
        elif payload.startswith(b'{"type":"pong"'):
            loop.answered("pong")
        elif payload.startswith(b'{"type":"error"'):
            loop.answered(str(json.loads(payload).get("code")))
        else:
            return  # room events: viewers, offer.stock
        if not loop.running:
            return
        wait = last_sent[id(client)] + MIN_SEND_INTERVAL - time.monotonic()
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, send, client)
        else:
            send(client)

    def start() -> None:
        for client in clients:
            client.on_event = on_event
            send(client)

    return await loop.run(start)


async def open_sockets(port: int, room_id: str, prefix: str, how_many: int) -> list[WsClient]:
    sockets: list[WsClient] = [
        LiveshopClient(
            HOST,
            port,
            room_id,
            issue_token(SECRET, f"{prefix}-{i}", Role.SHOPPER, ttl_seconds=3600),
        )
        for i in range(how_many)
    ]
    for first in range(0, len(sockets), 100):
        await asyncio.gather(*(open_client(c) for c in sockets[first : first + 100]))
    return sockets


async def sold_out(shop: Shop, pool: HttpPool) -> str:
    """An offer of one unit, sold."""
    offer_id = await shop.launch_offer(1)
    answer = await pool.submit(claims(shop.server.port, offer_id, "cost-first")())
    if answer.status != 201:
        raise RuntimeError(f"the first claim answered {answer.status}")
    return offer_id


# The refusal step by step: each claim is refused at a later check than the one before.
NO_TOKEN, NO_KEY, NO_COUNTRY, SOLD_OUT = "no_token", "no_key", "no_country", "sold_out"
LADDER = (
    ("http_no_token", NO_TOKEN, 401),
    ("http_no_key", NO_KEY, 422),
    ("http_no_country", NO_COUNTRY, 422),
)
NO_SUCH_COUNTRY_BODY = json.dumps(
    {"quantity": 1, "shipping_address": {**ADDRESS, "country": "QQ"}}, separators=(",", ":")
)


def claims(port: int, offer_id: str, prefix: str, flaw: str = SOLD_OUT) -> Callable[[], bytes]:
    """Each call: the next new buyer's claim (a token the server has not seen), with `flaw`."""
    buyers = itertools.count()
    path = f"/api/v1/offers/{offer_id}/claims"
    body = NO_SUCH_COUNTRY_BODY if flaw == NO_COUNTRY else CLAIM_BODY

    def next_claim() -> bytes:
        user = f"{prefix}-{next(buyers)}"
        headers = {"Idempotency-Key": f"k-{user}"}
        if flaw != NO_TOKEN:
            token = issue_token(SECRET, user, Role.SHOPPER, ttl_seconds=3600)
            headers["Authorization"] = f"Bearer {token}"
        if flaw == NO_KEY:
            del headers["Idempotency-Key"]
        return request_bytes("POST", path, port, headers, body)

    return next_claim


def best_burst_ratio(costs: dict[str, float], buyers: int, units: int) -> float:
    """The no-op's CPU for `buyers` requests over the claims' own: half on each transport."""
    orders = units * (costs["http_order"] + costs["ws_order"]) / 2
    refusals = (buyers - units) * (costs["http_refused"] + costs["ws_refused"]) / 2
    return buyers * costs["noop"] / (orders + refusals)


async def main_async(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.claimcost", *sys.argv[1:]]),
        "machine": machine(),
        "code": code_version(args.commit),
        "settings": {"seconds": args.seconds, "http": args.http, "sockets": args.sockets},
        "phases": {},
    }
    with tempfile.TemporaryDirectory(prefix="liveshop-cost-") as tmp:
        workdir = Path(tmp)
        valkey = await start_valkey(workdir)
        mongo = EmbeddedMongo(workdir / "mongodb")
        redis_url = f"redis://{HOST}:{valkey.port}/0"
        mongodb_url = await mongo.start()
        source = export_commit(args.commit, workdir / "src") if args.commit else None
        server = await start_liveshop(
            workdir, redis_url=redis_url, mongodb_url=mongodb_url, secret=SECRET, source=source
        )
        try:
            shop = Shop(args, workdir, valkey, mongo, server, redis_url, mongodb_url)
            await shop.open_room()
            pool = HttpPool(server.port, args.http)
            await pool.open()
            sockets = await open_sockets(server.port, shop.room_id, "cost-ws", args.sockets)
            ps, seconds, phases = server.ps(), args.seconds, report["phases"]
            healthz = request_bytes("GET", "/healthz", server.port, {})
            print("no-op GET /healthz")
            phases["noop"] = await http_phase(pool, lambda: healthz, ClosedLoop(ps, seconds), 200)
            big = await shop.launch_offer(
                BIG_OFFER, per_user_limit=PER_USER_LIMIT, duration_seconds=3600
            )
            gone = await sold_out(shop, pool)
            print("HTTP claims: refused at each check in turn, then orders")
            for name, flaw, status in LADDER:
                phases[name] = await http_phase(
                    pool,
                    claims(server.port, gone, f"cost-{flaw}", flaw),
                    ClosedLoop(ps, seconds),
                    status,
                )
            phases["http_refused"] = await http_phase(
                pool, claims(server.port, gone, "cost-r"), ClosedLoop(ps, seconds), 409
            )
            phases["http_order"] = await http_phase(
                pool, claims(server.port, big, "cost-o"), ClosedLoop(ps, seconds), 201
            )
            print("websocket claims: refused, then orders")
            # More sockets for pings, each under the frame rate a socket is allowed; opened
            # for this phase only, so the claims' phases see the same room as before.
            pinging = await open_sockets(server.port, shop.room_id, "cost-ping", PING_SOCKETS)
            phases["ws_ping"] = await ws_phase(pinging, None, ClosedLoop(ps, seconds))
            for client in pinging:
                client.close()
            phases["ws_refused"] = await ws_phase(sockets, gone, ClosedLoop(ps, seconds))
            phases["ws_order"] = await ws_phase(sockets, big, ClosedLoop(ps, seconds))
            pool.close()
            for client in sockets:
                client.close()
        finally:
            report["server_alive_at_end"] = server.alive()
            await server.stop()
            await mongo.stop()
            await valkey.stop()
    costs = {name: phase["server_cpu_us_per_answer"] for name, phase in report["phases"].items()}
    report["best_burst_ratio"] = round(best_burst_ratio(costs, args.buyers, args.quantity), 3)
    out = args.out_dir / f"claimcost-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report, args)
    print(f"\nJSON: {out}")
    expected = {name: "expected" for name in ("noop", "http_refused", "http_order")}
    expected |= {name: "expected" for name, _, _ in LADDER}
    expected |= {"ws_ping": "pong", "ws_refused": "sold_out", "ws_order": "order"}
    wrong = {
        name: phase["outcomes"]
        for name, phase in report["phases"].items()
        if set(phase["outcomes"]) != {expected[name]}
    }
    if wrong:
        print(f"unexpected answers: {wrong}")
    return 1 if wrong or not report["server_alive_at_end"] else 0


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    phases = report["phases"]
    noop = phases["noop"]["server_cpu_us_per_answer"]
    code = report["code"]
    modified = " with changes to the server's code" if code["server_code_modified"] else ""
    print(
        f"\nServer CPU per answer, closed loops of {args.seconds:g} s"
        f" (code {code['commit']}{modified})"
    )
    print(f"{'phase':<26}{'answers/s':>10}{'server CPU':>12}{'µs/answer':>11}{'x no-op':>9}")
    for name, phase in phases.items():
        cost = phase["server_cpu_us_per_answer"]
        print(
            f"{name:<26}{phase['answers_per_s']:>10.0f}{phase['server_cpu_pct']:>11.0f}%"
            f"{cost:>11.1f}{cost / noop:>9.2f}"
        )
    print(
        f"\nAt these costs a burst of {args.buyers} claims on {args.quantity} units, half over"
        f" each transport, runs at best at {report['best_burst_ratio']:.2f} x the no-op's"
        " requests/s (target 0.5)."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds a phase (5)")
    parser.add_argument("--http", type=int, default=64, help="HTTP connections in flight (64)")
    parser.add_argument(
        "--sockets", type=int, default=1024, help="websockets (1024; each under 18 frames/s)"
    )
    parser.add_argument("--buyers", type=int, default=2000, help="B, for the best burst ratio")
    parser.add_argument("--quantity", type=int, default=500, help="Q, for the best burst ratio")
    parser.add_argument(
        "--commit", help="run the server from this commit (git archive), not the working tree"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
