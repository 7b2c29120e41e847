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
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/claimcost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.buyers import ADDRESS, CLAIM_BODY, Shop
from bench.closedloop import (
    ClosedLoop,
    add_common_args,
    exit_code,
    http_phase,
    new_report,
    one_server,
    print_phases,
    save,
)
from bench.httpload import HOST, HttpPool, request_bytes
from bench.runinfo import SECRET, run_main
from bench.wsclient import LiveshopClient, WsClient, open_client
from server.auth import issue_token
from server.domain.identity import Role

BIG_OFFER = 1_000_000  # units: never sells out within a phase
# A socket may send 20 frames a second (channels/protocol.py), so each waits this long between
# its frames, and there are enough sockets that claims and pings at the server's pace fit.
MIN_SEND_INTERVAL = 1 / 18
PING_SOCKETS = 2048
PER_USER_LIMIT = 1000  # the most an offer allows: websocket buyers claim again and again


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
    settings = {"seconds": args.seconds, "http": args.http, "sockets": args.sockets}
    report = new_report("claimcost", args, settings)
    async with one_server(args, report) as shop:
        server = shop.server
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
        # More sockets for pings, each under the frame rate a socket is allowed; opened for
        # this phase only, so the claims' phases see the same room as before.
        pinging = await open_sockets(server.port, shop.room_id, "cost-ping", PING_SOCKETS)
        phases["ws_ping"] = await ws_phase(pinging, None, ClosedLoop(ps, seconds))
        for client in pinging:
            client.close()
        phases["ws_refused"] = await ws_phase(sockets, gone, ClosedLoop(ps, seconds))
        phases["ws_order"] = await ws_phase(sockets, big, ClosedLoop(ps, seconds))
        pool.close()
        for client in sockets:
            client.close()
    costs = {name: phase["server_cpu_us_per_answer"] for name, phase in report["phases"].items()}
    report["best_burst_ratio"] = round(best_burst_ratio(costs, args.buyers, args.quantity), 3)
    out = save(report, args, "claimcost")
    print_report(report, args)
    print(f"\nJSON: {out}")
    expected = {name: "expected" for name in ("noop", "http_refused", "http_order")}
    expected |= {name: "expected" for name, _, _ in LADDER}
    expected |= {"ws_ping": "pong", "ws_refused": "sold_out", "ws_order": "order"}
    return exit_code(report, expected)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    code = report["code"]
    modified = " with changes to the server's code" if code["server_code_modified"] else ""
    print(
        f"\nServer CPU per answer, closed loops of {args.seconds:g} s"
        f" (code {code['commit']}{modified})"
    )
    print_phases(report["phases"], 26)
    print(
        f"\nAt these costs a burst of {args.buyers} claims on {args.quantity} units, half over"
        f" each transport, runs at best at {report['best_burst_ratio']:.2f} x the no-op's"
        " requests/s (target 0.5)."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--http", type=int, default=64, help="HTTP connections in flight (64)")
    parser.add_argument(
        "--sockets", type=int, default=1024, help="websockets (1024; each under 18 frames/s)"
    )
    parser.add_argument("--buyers", type=int, default=2000, help="B, for the best burst ratio")
    parser.add_argument("--quantity", type=int, default=500, help="Q, for the best burst ratio")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
