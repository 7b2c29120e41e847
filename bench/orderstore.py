"""Orders and claims: what `MongoOrderStore.create` and a whole `OrderService.claim` cost the
server's CPU, against a bare PyMongo insert of the same documents in the same run.

Each measurement runs in a fresh process (`bench/orderstore_child.py`) on Liveshop's own mongod
(and a valkey for claims): CPU of that process per order (the server's share; mongod's is
apart), with orders made one at a time (each alone in its batch, as at a low claim rate) and N
at the same moment (one batch, as in a burst). The limit is `insert_many` of the same documents
with the same write concern: the least any order store could ask of PyMongo. A claim is the
whole path behind the HTTP and websocket endpoints: reservation script, order, attach and
`order.updated`, without the HTTP or websocket around it.

    .venv/bin/python -m bench.orderstore                     # this tree and the limit
    .venv/bin/python -m bench.orderstore --against 0cdb124   # and that commit, in turn

Variants take turns within each round, so a machine that slows down mid-run slows all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/orderstore.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runinfo import (
    RESULTS_DIR,
    code_version,
    export_commit,
    machine,
    print_run_header,
    run_main,
)
from bench.servers import REPO_ROOT, start_valkey
from server.adapters.mongo.embedded import EmbeddedMongo

CHILD = Path(__file__).resolve().parent / "orderstore_child.py"
LIMIT = "bare insert_many (limit)"


def _measure(
    source: Path, what: str, mongo: EmbeddedMongo, redis_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One child's figures (it samples mongod's CPU around its own measured loops)."""
    argv = [sys.executable, str(CHILD), "--url", mongo.url, "--redis-url", redis_url]
    argv += ["--mongod-pid", str(mongo.pid)]
    argv += ["--what", what, "--database", f"bench_{uuid.uuid4().hex[:8]}"]
    argv += ["--orders", str(args.orders), "--together", *map(str, args.together)]
    # PYTHONPATH comes ahead of the editable install's finder: `server` is the variant's.
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="liveshop-orderstore-") as tmp:
        variants = {"store": (REPO_ROOT, "store"), LIMIT: (REPO_ROOT, "bare")}
        against = export_commit(args.against, Path(tmp) / "against") if args.against else None
        if against is not None:
            variants[f"store at {args.against}"] = (against, "store")
        variants["claim"] = (REPO_ROOT, "claim")
        if against is not None:
            variants[f"claim at {args.against}"] = (against, "claim")
        runs: dict[str, list[Any]] = {name: [] for name in variants}
        valkey = await start_valkey(Path(tmp))
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
        try:
            async with EmbeddedMongo(Path(tmp) / "mongodb") as mongo:
                for round_no in range(args.rounds):
                    for name, (source, what) in variants.items():
                        print(f"round {round_no + 1}/{args.rounds}: {name}", flush=True)
                        figures = await asyncio.to_thread(
                            _measure, source, what, mongo, redis_url, args
                        )
                        runs[name].append(figures)
        finally:
            await valkey.stop()
    report = {
        "bench": "orderstore",
        "at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "code": code_version(None),
        "against": args.against,
        "orders": args.orders,
        "runs": runs,
    }
    _print(report, args.together)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"orderstore-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {out}")
    return 0


def _print(report: dict[str, Any], together: list[int]) -> None:
    print_run_header(report, "in-process app, this tree")
    header = f"{'variant':32}" + "".join(f"{f'{n} at once':>22}" for n in together)
    for title, field in (("the server's process", "cpu_us"), ("mongod", "mongod_cpu_us")):
        print(f"\nCPU of {title} per order, µs: median over rounds (min-max)\n{header}")
        for name, runs in report["runs"].items():
            cells = []
            for n in together:
                values = [run[str(n)][field] for run in runs]
                cells.append(
                    f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"
                )
            print(f"{name:32}" + "".join(f"{cell:>22}" for cell in cells))
    print("\nThe host's figures for an offer of --figures-orders orders (20,000), read back;")
    print("the orders as the store counts them (a store keeping counters counts only its own):")
    for name, runs in report["runs"].items():
        reads = [run["figures_read"] for run in runs if "figures_read" in run]
        if reads:
            ms = statistics.median(read["ms"] for read in reads)
            print(f"{name:32}{reads[0]['orders']:>8} orders: {ms:.1f} ms (median over rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="also measure the store of this commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--orders", type=int, default=800, help="orders per measurement")
    parser.add_argument("--together", type=int, nargs="+", default=[1, 8, 32])
    sys.exit(run_main(main, parser.parse_args()))
