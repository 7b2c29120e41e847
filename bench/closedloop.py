"""What the cost benches share: one Liveshop server on its own valkey and mongod, closed loops
that count answers against the server's CPU, and the report.

A phase's figure is CPU seconds of the server process per answer, set against the no-op
(`GET /healthz`) measured by the same bench in the same run (bench/claimcost.py,
bench/joincost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.buyers import Shop
from bench.cpu import no_generator_gc
from bench.httpload import HOST, HttpAnswer, HttpPool
from bench.runinfo import RESULTS_DIR, SECRET, code_version, export_commit, machine
from bench.servers import start_liveshop, start_valkey
from server.adapters.mongo.embedded import EmbeddedMongo


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
        with no_generator_gc():
            window = CpuWindow(self.server)
            self._until = window.started + self.seconds
            start()
            await asyncio.sleep(self.seconds)
            figures = window.close(self.answers, self.outcomes)
            await asyncio.sleep(1.0)  # the last answers land before the next phase starts
        return figures


class CpuWindow:
    """The server's CPU from now until `close`, per answer and as a share of a core."""

    def __init__(self, server: psutil.Process) -> None:
        self.server = server
        self.before, self.started = server.cpu_times(), time.monotonic()

    def close(self, answers: int, outcomes: Mapping[str, int]) -> dict[str, Any]:
        after, seconds = self.server.cpu_times(), time.monotonic() - self.started
        cpu = (after.user + after.system) - (self.before.user + self.before.system)
        return {
            "answers": answers,
            "seconds": round(seconds, 3),
            "answers_per_s": round(answers / seconds, 1),
            "server_cpu_pct": round(100 * cpu / seconds, 1),
            "server_cpu_us_per_answer": round(1e6 * cpu / max(answers, 1), 1),
            "outcomes": dict(outcomes),
        }


async def http_phase(
    pool: HttpPool, requests: Callable[[], bytes], loop: ClosedLoop, expected: int
) -> dict[str, Any]:
    """Each connection of `pool` sends the next of `requests` as soon as it has its answer."""

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


def new_report(bench: str, args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m bench.{bench}", *sys.argv[1:]]),
        "machine": machine(),
        "code": code_version(args.commit),
        "settings": settings,
        "phases": {},
    }


@asynccontextmanager
async def one_server(args: argparse.Namespace, report: dict[str, Any]) -> AsyncIterator[Shop]:
    """A Liveshop server (as of `args.commit`, if given) on its own valkey and mongod, with a
    live room; all stopped on the way out, and whether the server lived noted in `report`."""
    report["server_alive_at_end"] = False
    with tempfile.TemporaryDirectory(prefix="liveshop-cost-") as tmp:
        async with AsyncExitStack() as started:  # whatever started is stopped, last first
            workdir = Path(tmp)
            valkey = await start_valkey(workdir)
            started.push_async_callback(valkey.stop)
            mongo = EmbeddedMongo(workdir / "mongodb")
            started.push_async_callback(mongo.stop)
            mongodb_url = await mongo.start()
            redis_url = f"redis://{HOST}:{valkey.port}/0"
            source = export_commit(args.commit, workdir / "src") if args.commit else None
            server = await start_liveshop(
                workdir, redis_url=redis_url, mongodb_url=mongodb_url, secret=SECRET, source=source
            )
            started.push_async_callback(server.stop)
            try:
                shop = Shop(args, workdir, valkey, mongo, server, redis_url, mongodb_url)
                await shop.open_room()
                yield shop
            finally:
                report["server_alive_at_end"] = server.alive()


def save(report: dict[str, Any], args: argparse.Namespace, bench: str) -> Path:
    out_dir: Path = args.out_dir
    out = out_dir / f"{bench}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    return out


def print_phases(phases: Mapping[str, dict[str, Any]], name_width: int) -> None:
    """Each phase's answers a second, server CPU, and CPU per answer alone and over the no-op's;
    a storm (everyone at once) says how long it took."""
    noop = phases["noop"]["server_cpu_us_per_answer"]
    print(
        f"{'phase':<{name_width}}{'answers/s':>10}{'server CPU':>12}{'µs/answer':>11}{'x no-op':>9}"
    )
    for name, phase in phases.items():
        cost = phase["server_cpu_us_per_answer"]
        took = f"   all in {phase['seconds']:.2f} s" if phase.get("storm") else ""
        print(
            f"{name:<{name_width}}{phase['answers_per_s']:>10.0f}"
            f"{phase['server_cpu_pct']:>11.0f}%{cost:>11.1f}{cost / noop:>9.2f}{took}"
        )


def exit_code(report: dict[str, Any], expected: Mapping[str, str]) -> int:
    """1 when a phase had answers other than the one `expected` of it, or the server died."""
    wrong = {
        name: phase["outcomes"]
        for name, phase in report["phases"].items()
        if set(phase["outcomes"]) != {expected[name]}
    }
    if wrong:
        print(f"unexpected answers: {wrong}")
    return 1 if wrong or not report["server_alive_at_end"] else 0


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds a phase (5)")
    parser.add_argument(
        "--commit", help="run the server from this commit (git archive), not the working tree"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
