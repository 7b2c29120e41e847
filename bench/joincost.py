"""What a viewer joining a room costs the server, against one no-op request, in the same run.

When Redis loses a room's event stream, every socket of the room is closed (4012) and all its
viewers come back at once; when a famous host goes live, thousands join in the same second. This
measures a join in a closed loop long enough to be steady, as CPU seconds of the server process
per join (the websocket's handshake, the `hello` with the room's state, and the close):

- the no-op: `GET /healthz` over HTTP, the stack's own cost;
- an anonymous viewer's join (no token: nothing to check, no private channel);
- a signed-in shopper's join, coming back with the token it had (the server has seen it): the
  token, the room's bans for this user, and the user's private channel for `order.updated`;
- storms: `--storm` anonymous viewers, then as many signed-in ones, joining at the same moment
  (the time until the last hello, and the CPU per join).

    .venv/bin/python -m bench.joincost                  # ~40 s
    .venv/bin/python -m bench.joincost --commit a503646 # the server as of a commit
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/joincost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.closedloop import (
    ClosedLoop,
    CpuWindow,
    add_common_args,
    exit_code,
    http_phase,
    new_report,
    one_server,
    print_phases,
    save,
)
from bench.cpu import no_generator_gc
from bench.httpload import HOST, HttpPool, request_bytes
from bench.runinfo import SECRET, run_main
from bench.wsclient import LiveshopClient, open_client
from server.auth import issue_token
from server.domain.identity import Role


async def join_phase(
    port: int, room_id: str, tokens: list[str | None], width: int, loop: ClosedLoop
) -> dict[str, Any]:
    """`width` joiners, each joining, hearing hello and leaving, again and again, the next
    joiner taking the next token of `tokens` (round and round)."""
    turns = itertools.cycle(tokens)

    async def joiner() -> None:
        while loop.running:
            client = LiveshopClient(HOST, port, room_id, next(turns))
            try:
                await open_client(client, limit_s=10)
            except (OSError, TimeoutError) as error:
                loop.answered(type(error).__name__)
                client.close()
                continue
            client.close()
            await client.closed
            loop.answered("hello")

    joiners: list[asyncio.Task[None]] = []

    def start() -> None:
        joiners.extend(asyncio.ensure_future(joiner()) for _ in range(width))

    result = await loop.run(start)
    await asyncio.gather(*joiners)
    return result


async def storm(
    server: psutil.Process, port: int, room_id: str, tokens: list[str | None]
) -> dict[str, Any]:
    """Everyone in `tokens` joins at the same moment, as a room's viewers do when its stream
    was reset: the time until the last hello, and the server's CPU per join."""
    clients = [LiveshopClient(HOST, port, room_id, token) for token in tokens]
    with no_generator_gc():
        window = CpuWindow(server)
        opened = await asyncio.gather(
            *(open_client(c, limit_s=60) for c in clients), return_exceptions=True
        )
        outcomes = Counter(
            type(result).__name__ if isinstance(result, BaseException) else "hello"
            for result in opened
        )
        figures = window.close(outcomes["hello"], outcomes) | {"storm": True}
    for client in clients:
        client.close()
    await asyncio.gather(*(c.closed for c in clients if c.transport is not None))
    await asyncio.sleep(1.0)  # the leaves land before the next phase
    return figures


async def main_async(args: argparse.Namespace) -> int:
    settings = {"seconds": args.seconds, "width": args.width, "users": args.users}
    report = new_report("joincost", args, settings | {"storm": args.storm})
    async with one_server(args, report) as shop:
        port, ps, phases = shop.server.port, shop.server.ps(), report["phases"]
        pool = HttpPool(port, args.width)
        await pool.open()
        healthz = request_bytes("GET", "/healthz", port, {})
        print("no-op GET /healthz")
        phases["noop"] = await http_phase(pool, lambda: healthz, ClosedLoop(ps, args.seconds), 200)
        pool.close()
        # A viewer stays in the room throughout, so that it stays open between joins.
        keeper = LiveshopClient(HOST, port, shop.room_id, None)
        await open_client(keeper)
        shoppers: list[str | None] = [
            issue_token(SECRET, f"joiner-{i}", Role.SHOPPER, ttl_seconds=3600)
            for i in range(args.users)
        ]
        anonymous: list[str | None] = [None] * max(args.storm, 1)
        for name, tokens in (("join_anonymous", anonymous), ("join_signed_in", shoppers)):
            print(name)
            phases[name] = await join_phase(
                port, shop.room_id, tokens, args.width, ClosedLoop(ps, args.seconds)
            )
        for name, tokens in (
            ("storm_anonymous", anonymous[: args.storm]),
            ("storm_signed_in", shoppers[: args.storm]),
        ):
            print(f"{name}: {len(tokens)} at once")
            phases[name] = await storm(ps, port, shop.room_id, tokens)
        keeper.close()
    out = save(report, args, "joincost")
    code = report["code"]
    modified = " with changes to the server's code" if code["server_code_modified"] else ""
    print(
        f"\nServer CPU per answer: closed loops of {args.seconds:g} s, {args.width} at a time;"
        f" storms of {args.storm} at once (code {code['commit']}{modified})"
    )
    print_phases(report["phases"], 18)
    print(f"\nJSON: {out}")
    return exit_code(report, {name: "hello" for name in report["phases"]} | {"noop": "expected"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--width", type=int, default=64, help="joins (and requests) at once (64)")
    parser.add_argument(
        "--users", type=int, default=2000, help="signed-in shoppers taking turns (2000)"
    )
    parser.add_argument("--storm", type=int, default=1000, help="viewers joining at once (1000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
