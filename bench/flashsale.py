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
Q, nothing oversold, one order per (buyer, idempotency key), no buyer over the offer's
per-user limit (read back from the server); every order a buyer was answered with or heard of
is there and still holds stock, and every order there was told to its buyer; the units orders
hold plus the offer's remaining stock in Redis make Q.

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
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.buyers import Shop, http_pool_size, make_buyers
from bench.cpu import wait_quiet
from bench.flashsale_checks import server_log_summary
from bench.flashsale_phases import run_burst, run_noop, run_paced, run_redis_limit
from bench.flashsale_report import evaluate, print_report
from bench.httpload import HOST
from bench.runinfo import RESULTS_DIR, SECRET, code_version, export_commit, machine, run_main
from bench.servers import Child, start_liveshop, start_valkey
from server.adapters.mongo.embedded import EmbeddedMongo

PACED_RATE = 1000.0


# A bare keep-alive HTTP/1.1 client ----------------------------------------------------------


# Claims and who answered them ------------------------------------------------------------------


# Figures ----------------------------------------------------------------------------------------


# The bench ------------------------------------------------------------------------------------


# Report -----------------------------------------------------------------------------------------


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
        shop: Shop | None = None
        try:
            mongodb_url = await mongo.start()
            redis_url = f"redis://{HOST}:{valkey.port}/0"
            source = export_commit(args.commit, Path(tmp) / "src") if args.commit else None

            async def start_server() -> Child:
                return await start_liveshop(
                    workdir,
                    redis_url=redis_url,
                    mongodb_url=mongodb_url,
                    secret=SECRET,
                    source=source,
                )

            server = await start_server()
            shop = Shop(args, workdir, valkey, mongo, server, redis_url, mongodb_url)
            shop.meter_processes = {"server": server.ps(), "valkey": valkey.ps()}
            for i in range(2, args.servers + 1):
                more = await start_server()
                shop.more_servers.append(more)
                shop.meter_processes[f"server_{i}"] = more.ps()
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
            for i, more in enumerate(shop.more_servers if shop else [], start=2):
                report[f"server_{i}_alive_at_end"] = more.alive()
                report[f"server_{i}_log"] = server_log_summary(more)
                await more.stop()
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
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="paced runs spread their buyers over this many server processes (as behind a load"
        " balancer); the no-op and the burst always use one",
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
    return run_main(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
