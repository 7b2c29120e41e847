"""Redis losing a flash offer mid-sale (finding 112): how long a burst of claims arriving at the
same moment on the lost offer takes to be answered, and what it costs, against the same burst
on the offer whose stock is still in Redis (the limit), in the same run.

Each measurement runs in a fresh process (`bench/redisloss_child.py`) on a valkey and
Liveshop's own mongod, through the app's own OrderService (the claim behind the HTTP and
websocket endpoints, without them): `--sold` buyers (250) claim one unit each, then `--claims`
new buyers (1,500) claim together, with the stock in place (`in_place`) or after a FLUSHALL
(`lost`: every claim finds the offer lost and needs its stock rebuilt from its orders in
MongoDB). Figures: wall seconds until every claim has answered, CPU seconds of that process
and of mongod during the burst, the answers by outcome (an order, or the error's code), and
the offer's orders pending payment in MongoDB once the app has shut down: they must be the
orders before the burst plus the burst's, and never above the offer's quantity.

    .venv/bin/python -m bench.redisloss                                  # this tree, ~15 s
    .venv/bin/python -m bench.redisloss --against d85ced4 --rounds 1     # and that commit
    .venv/bin/python -m bench.redisloss --against d85ced4 --rounds 1 --mongodb-timeout 600

Before bbbbc51 each claim of the burst rebuilds the stock on its own. Under the app's deadline
for a MongoDB call (`mongodb_timeout_seconds`, 5 s) that keeps d85ced4's process busy ~10 s
and most claims answer `unavailable`; with a far deadline (`--mongodb-timeout 600`, as when the
services run on a client without one) every rebuild runs to its end, a minute or more. Use
`--rounds 1` (or fewer `--claims`) with `--against` a commit before bbbbc51.

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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/redisloss.py`
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

CHILD = Path(__file__).resolve().parent / "redisloss_child.py"
VARIANTS = ("in_place", "lost")
CHILD_LIMIT_S = 1800  # a lost burst at d85ced4 takes about a minute; this is a hang


def _measure(
    source: Path, variant: str, mongo: EmbeddedMongo, redis_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One child's figures."""
    argv = [sys.executable, str(CHILD), "--url", mongo.url, "--redis-url", redis_url]
    argv += ["--mongod-pid", str(mongo.pid), "--database", f"bench_{uuid.uuid4().hex[:8]}"]
    argv += ["--variant", variant, "--sold", str(args.sold), "--claims", str(args.claims)]
    if args.mongodb_timeout:
        argv += ["--mongodb-timeout", str(args.mongodb_timeout)]
    # PYTHONPATH comes ahead of the editable install's finder: `server` is the variant's.
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, timeout=CHILD_LIMIT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} at {source} failed:\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="liveshop-redisloss-") as tmp:
        variants = {variant: (REPO_ROOT, variant) for variant in VARIANTS}
        if args.against:
            against = export_commit(args.against, Path(tmp) / "against")
            variants |= {f"{v} at {args.against}": (against, v) for v in VARIANTS}
        runs: dict[str, list[Any]] = {name: [] for name in variants}
        valkey = await start_valkey(Path(tmp))
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
        try:
            async with EmbeddedMongo(Path(tmp) / "mongodb") as mongo:
                for round_no in range(args.rounds):
                    for name, (source, variant) in variants.items():
                        print(f"round {round_no + 1}/{args.rounds}: {name}", flush=True)
                        figures = await asyncio.to_thread(
                            _measure, source, variant, mongo, redis_url, args
                        )
                        runs[name].append(figures)
        finally:
            await valkey.stop()
    report = {
        "bench": "redisloss",
        "at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "code": code_version(None),
        "against": args.against,
        "sold": args.sold,
        "claims": args.claims,
        "mongodb_timeout": args.mongodb_timeout,
        "runs": runs,
    }
    _print(report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"redisloss-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {out}")
    return 0


def _spread(runs: list[dict[str, Any]], figure: Callable[[dict[str, Any]], float]) -> str:
    """Median over rounds (min-max)."""
    values = [figure(run) for run in runs]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _orders_first(outcome: str) -> tuple[bool, str]:
    return outcome != "order", outcome


def _outcomes(runs: list[dict[str, Any]]) -> str:
    """The burst's answers by outcome, median over rounds (min-max): orders first."""
    cells = []
    for outcome in sorted({o for run in runs for o in run["outcomes"]}, key=_orders_first):
        counts = [run["outcomes"].get(outcome, 0) for run in runs]
        spread = f" ({min(counts)}-{max(counts)})" if min(counts) != max(counts) else ""
        cells.append(f"{statistics.median(counts):g}{spread} {outcome}")
    return ", ".join(cells)


def _orders(runs: list[dict[str, Any]]) -> str:
    """The offer's orders pending payment at the end, and whether every round's add up."""
    pending = [run["orders_at_end"].get("pending_payment", 0) for run in runs]
    ok = "ok" if all(run["orders_ok"] for run in runs) else "MISMATCH"
    spread = f" ({min(pending)}-{max(pending)})" if min(pending) != max(pending) else ""
    return f"{statistics.median(pending):g}{spread}/{runs[0]['quantity']} {ok}"


def _print(report: dict[str, Any]) -> None:
    print_run_header(report, "in-process app, this tree")
    if report["mongodb_timeout"]:
        print(f"MongoDB deadline (mongodb_timeout_seconds): {report['mongodb_timeout']} s")
    print(
        f"\n{report['claims']} claims at once on an offer with {report['sold']} orders;"
        " seconds: median over rounds (min-max); orders: pending payment / offer's quantity"
    )
    header = f"{'variant':22}{'wall s':>22}{'CPU s':>22}{'mongod CPU s':>22}  {'orders':26}"
    print(f"{header}answers")
    for name, runs in report["runs"].items():
        print(
            f"{name:22}"
            f"{_spread(runs, lambda run: run['wall_s']):>22}"
            f"{_spread(runs, lambda run: run['cpu_s']):>22}"
            f"{_spread(runs, lambda run: run['mongod_cpu_s']):>22}"
            f"  {_orders(runs):26}{_outcomes(runs)}"
        )
    print("\nSeconds from a claim to its answer, by outcome: median over rounds of p50, p99, max")
    for name, runs in report["runs"].items():
        for outcome in sorted({o for run in runs for o in run["answer_s"]}, key=_orders_first):
            timed = [run["answer_s"][outcome] for run in runs if outcome in run["answer_s"]]
            cells = [f"{statistics.median(t[p] for t in timed):.2f}" for p in ("p50", "p99", "max")]
            print(f"{name:22}{outcome:>14}: {', '.join(cells)}")
    print("\nFrom the burst until the app had shut down (its work in the background over), s:")
    print(f"{'variant':22}{'wall s':>22}{'CPU s':>22}")
    for name, runs in report["runs"].items():
        print(
            f"{name:22}"
            f"{_spread(runs, lambda run: run['wall_to_end_s']):>22}"
            f"{_spread(runs, lambda run: run['cpu_to_end_s']):>22}"
        )
    for name, runs in report["runs"].items():
        for run in runs:
            if any(outcome != "order" for outcome in run["sold_outcomes"]):
                print(f"note: {name}: the claims before the burst answered {run['sold_outcomes']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="also measure this commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sold", type=int, default=250, help="orders before the burst")
    parser.add_argument("--claims", type=int, default=1500, help="claims in the burst")
    parser.add_argument(
        "--mongodb-timeout",
        type=float,
        help="the app's deadline for a MongoDB call, seconds (default: Settings', 5; at most 600)",
    )
    sys.exit(run_main(main, parser.parse_args()))
