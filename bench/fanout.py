"""Websocket fan-out benchmark: one live room, N viewers, a sender chatting at R msg/s.

Starts its own valkey, mongod and server processes, compares Liveshop with python-socketio
(AsyncRedisManager on uvicorn) on the same machine in the same run, prints a table with PASS/MISS
against the targets, and writes JSON to bench/results/.

    .venv/bin/python -m bench.fanout            # every scenario, about 7 minutes
    .venv/bin/python -m bench.fanout --quick    # smoke run, under 2 minutes
    .venv/bin/python -m bench.fanout --only a,e --profile

Scenarios: (a) 2,000 viewers at 10 msg/s; (b) saturation, 2,000 viewers at 50 msg/s, Liveshop
and the socket.io peer; (c) 5,000 viewers at 20 msg/s; (d) 2,000 viewers with and without one
client that stops reading; (e) memory per idle connection (Liveshop deflate off and on, peer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/fanout.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import profile
from bench.fanout_load import Scenario, Sender, ViewersProcess, open_senders, scenarios
from bench.memtrace import compare_snapshots, snapshot
from bench.report import evaluate, print_report
from bench.runinfo import (
    RESULTS_DIR,
    SECRET,
    code_version,
    export_commit,
    machine,
    own_cpu,
    run_main,
)
from bench.servers import (
    Child,
    http,
    start_liveshop,
    start_peer,
    start_valkey,
)
from server.adapters.mongo.embedded import EmbeddedMongo
from server.auth import issue_token
from server.domain.identity import Role

# The viewers process --------------------------------------------------------------------------


# The sender -----------------------------------------------------------------------------------


# One run --------------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    redis_url: str
    mongodb_url: str
    valkey: Child
    source: Path | None = None

    async def start_server(self, sc: Scenario, *, tracemalloc_dir: Path | None = None) -> Child:
        if sc.server == "socketio":
            return await start_peer(
                self.workdir, redis_url=self.redis_url, loop=self.args.peer_loop
            )
        extra = (
            {"LIVESHOP_SEND_QUEUE_FRAMES": str(self.args.send_queue)}
            if self.args.send_queue
            else {}
        )
        return await start_liveshop(
            self.workdir,
            redis_url=self.redis_url,
            mongodb_url=self.mongodb_url,
            secret=SECRET,
            deflate=sc.deflate,
            loop=self.args.liveshop_loop,
            gc_log=self.args.gc_log,
            gc_freeze=self.args.gc_freeze,
            tracemalloc_dir=tracemalloc_dir,
            source=self.source,
            extra_env=extra,
        )


async def make_room(server: Child, sc: Scenario) -> str:
    if sc.server == "socketio":
        return "bench-room"
    base = f"http://127.0.0.1:{server.port}/api/v1"
    # A host of its own for each scenario's room: the rooms of a run share one database, and
    # one host may have only so many rooms live (MAX_LIVE_ROOMS_PER_HOST).
    host = f"bench-host-{secrets.token_hex(4)}"
    token = issue_token(SECRET, host, Role.HOST, name="Bench host", ttl_seconds=6 * 3600)
    status, room = await asyncio.to_thread(http, "POST", f"{base}/rooms", {"title": "bench"}, token)
    if status != 201:
        raise RuntimeError(f"POST /rooms answered {status}: {room}")
    status, body = await asyncio.to_thread(
        http, "POST", f"{base}/rooms/{room['id']}/start", {}, token
    )
    if status >= 300:
        raise RuntimeError(f"POST /rooms/{{id}}/start answered {status}: {body}")
    return str(room["id"])


_METRIC = re.compile(r"^(liveshop_[a-z_]+?)(?:_total)?(?:\{[^}]*\})? ([0-9.e+-]+)$", re.M)
_SKIP_METRIC = ("_created", "_bucket")


async def liveshop_metrics(server: Child) -> dict[str, float]:
    status, text = await asyncio.to_thread(http, "GET", f"http://127.0.0.1:{server.port}/metrics")
    if status != 200 or not isinstance(text, str):
        return {}
    found: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        if name.endswith(_SKIP_METRIC):
            continue
        found[name] = found.get(name, 0.0) + float(value)
    return found


class Sampler:
    """Peak RSS of the server while a run goes on; with `watch`, Liveshop's open-socket gauge
    and slow-consumer counter once a second, to see when a stalled socket is dealt with."""

    def __init__(self, server: Child, *, watch: bool = False) -> None:
        self.server = server
        self.process = server.ps()
        self.peak_rss = 0
        self.started = time.monotonic()
        self.timeline: list[tuple[float, float, float]] = []  # (monotonic, sockets, slow closes)
        self._tasks = [asyncio.create_task(self._rss())]
        if watch:
            self._tasks.append(asyncio.create_task(self._metrics()))

    async def _rss(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            await asyncio.sleep(0.25)

    async def _metrics(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                found = await liveshop_metrics(self.server)
                self.timeline.append(
                    (
                        time.monotonic(),
                        found.get("liveshop_ws_connections", -1.0),
                        found.get("liveshop_ws_slow_consumer_disconnects", -1.0),
                    )
                )
            await asyncio.sleep(1.0)

    def first_change(self, column: int, since: float) -> float | None:
        """Seconds from `since` (monotonic) until the column first differs from its first value."""
        if not self.timeline:
            return None
        first = self.timeline[0][column]
        when = next((row[0] for row in self.timeline if row[column] != first), None)
        return None if when is None else round(when - since, 1)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def cpu_of(child: Child) -> float:
    times = child.ps().cpu_times()
    return float(times.user + times.system)


async def run_flow(ctx: Context, sc: Scenario) -> dict[str, Any]:
    server = await ctx.start_server(sc)
    log = ctx.workdir / f"viewers-{server.port}.log"
    viewers: ViewersProcess | None = None
    sender: Sender | None = None
    try:
        room_id = await make_room(server, sc)
        viewers, ready = await ViewersProcess.start(server, room_id, sc, sc.viewers, log)
        print(
            f"    {ready['viewers']} viewers up in {ready['seconds']}s ({ready['failed']} failed)"
        )
        sender = await open_senders(server, sc, room_id)
        metrics0 = await liveshop_metrics(server) if sc.server == "liveshop" else {}
        sampler = Sampler(server, watch=bool(sc.stalled) and sc.server == "liveshop")
        await sender.run(sc.rate, sc.warmup)
        first = sender.next_index
        await viewers.cmd("reset", from_idx=first)
        spy = None
        if ctx.args.profile:
            spy_out = ctx.args.out_dir / f"profile-{sc.key}-{sc.server}-{int(time.time())}.txt"
            spy = await profile.record(server.pid, sc.duration, spy_out)
        cpu0, valkey0, me0, t0 = cpu_of(server), cpu_of(ctx.valkey), own_cpu(), time.monotonic()
        sent = await sender.run(sc.rate, sc.duration)
        t1 = time.monotonic()
        cpu1, valkey1, me1 = cpu_of(server), cpu_of(ctx.valkey), own_cpu()
        rss_end = server.ps().memory_info().rss
        expected = sent * ready["viewers"]
        drained_at, drain_end = await drain(viewers, expected, sc.max_drain, sc.drain_idle)
        stats = await viewers.cmd("stats", limit_s=300)
        stalled = None
        if sc.stalled:
            before = await liveshop_metrics(server) if sc.server == "liveshop" else {}
            stalled = await viewers.cmd("resume_stalled", wait=12, limit_s=120)
            for client in stalled["clients"]:
                client["server_sockets_before_resume"] = before.get("liveshop_ws_connections")
                # Seconds after the stalled client stopped reading.
                client["server_slow_closes_at_s"] = sampler.first_change(2, ready["stalled_at"])
                client["server_socket_dropped_at_s"] = sampler.first_change(1, ready["stalled_at"])
        metrics1 = await liveshop_metrics(server) if sc.server == "liveshop" else {}
        await sampler.stop()
        hot = None
        if spy is not None:
            await spy.wait()
            hot = profile.summarize(spy_out)
        window = t1 - t0
        in_window = sum(
            count
            for bucket, count in stats["buckets"]
            if t0 <= bucket * stats["bucket_ns"] / 1e9 < t1
        )
        return {
            "scenario": asdict(sc),
            "room_id": room_id,
            "viewers": ready["viewers"],
            "connect_seconds": ready["seconds"],
            "connect_failed": ready["failed"],
            "sent": sent,
            "send_rate": round(sent / window, 2),
            "sender_errors": sender.errors,
            "sender_closes": sender.closes(),
            "sender_last_error": sender.last_error,
            "expected": expected,
            "delivered": stats["delivered"],
            "loss": max(0, expected - stats["delivered"]),
            "offered_deliveries_per_s": round(expected / window, 1),
            "deliveries_per_s": round(in_window / window, 1),
            "drain_seconds": round(drained_at - t1, 2),
            "drain_end": drain_end,
            "latency": {k: v for k, v in stats.items() if k.endswith("_ms")},
            "timeline_ms": stats["timeline"],  # [index, first delivery, last delivery]
            "server_cpu_pct": round(100 * (cpu1 - cpu0) / window, 1),
            "valkey_cpu_pct": round(100 * (valkey1 - valkey0) / window, 1),
            "sender_cpu_pct": round(100 * (me1 - me0) / window, 1),
            "generator_cpu_pct": round(100 * stats["cpu_seconds"] / stats["wall_seconds"], 1),
            "server_rss_mb": round(rss_end / 2**20, 1),
            "server_peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
            "viewer_closes": stats["closes"],
            "viewers_open": stats["open"],
            "per_viewer_min": stats["per_viewer_min"],
            "per_viewer_max": stats["per_viewer_max"],
            "stalled": stalled["clients"] if stalled else None,
            "server_metrics": {k: v - metrics0.get(k, 0.0) for k, v in metrics1.items()},
            "profile": hot,
        }
    finally:
        if sender is not None:
            sender.close()
        if viewers is not None:
            await viewers.quit()
        await server.stop()


async def drain(
    viewers: ViewersProcess, expected: int, max_wait: float, idle: float
) -> tuple[float, str]:
    """Wait until every delivery arrived ("complete"), or nothing more came for a while ("idle":
    the rest is lost), or time ran out while they still came ("deadline": a backlog)."""
    deadline = time.monotonic() + max_wait
    last, last_change = -1, time.monotonic()
    while True:
        delivered = int((await viewers.cmd("count"))["delivered"])
        now = time.monotonic()
        if delivered != last:
            last, last_change = delivered, now
        if delivered >= expected:
            return last_change, "complete"
        if now - last_change > idle:
            return last_change, "idle"
        if now > deadline:
            return last_change, "deadline"
        await asyncio.sleep(0.25)


async def run_idle(ctx: Context, sc: Scenario) -> dict[str, Any]:
    """RSS growth of the server per idle connection: warm the room with a few viewers, then add
    N more and divide; then send a few messages and measure again (zlib state gets touched)."""
    traced = ctx.workdir / f"tracemalloc-{len(os.listdir(ctx.workdir))}"
    tracing = sc.traced and sc.server == "liveshop"
    if tracing:
        traced.mkdir()
    server = await ctx.start_server(sc, tracemalloc_dir=traced if tracing else None)
    warm = 20
    viewers: ViewersProcess | None = None
    sender: Sender | None = None
    try:
        room_id = await make_room(server, sc)
        log = ctx.workdir / f"viewers-{server.port}.log"
        viewers, _ = await ViewersProcess.start(server, room_id, sc, warm, log)
        sender = await open_senders(server, replace(sc, rate=1), room_id)
        settle = 1.0 if ctx.args.quick else 2.0  # let the room and the allocator settle
        await sender.run(5, 1)
        await asyncio.sleep(settle)
        rss0 = server.ps().memory_info().rss
        if tracing:
            await snapshot(server, traced / "snap-0.bin")
        ready = await viewers.cmd("grow", n=sc.viewers, limit_s=300)
        await asyncio.sleep(settle + 1)
        rss1 = server.ps().memory_info().rss
        allocations = None
        if tracing:
            await snapshot(server, traced / "snap-1.bin")
            allocations = compare_snapshots(traced, ready["viewers"] - warm)
        await sender.run(5, 2)
        await asyncio.sleep(settle)
        rss2 = server.ps().memory_info().rss
        added = ready["viewers"] - warm
        return {
            "scenario": asdict(sc),
            "viewers": added,
            "connect_seconds": ready["seconds"],
            "connect_failed": ready["failed"],
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_idle_mb": round(rss1 / 2**20, 1),
            "rss_after_10_messages_mb": round(rss2 / 2**20, 1),
            "kb_per_idle_connection": round((rss1 - rss0) / added / 1024, 1),
            "kb_per_connection_after_messages": round((rss2 - rss0) / added / 1024, 1),
            "python_allocations_per_connection": allocations,
        }
    finally:
        if sender is not None:
            sender.close()
        if viewers is not None:
            await viewers.quit()
        await server.stop()


# Main -----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    runs = scenarios(args)
    code = code_version(args.commit)  # at the start: others may commit while the bench runs
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="liveshop-bench-") as tmp:
        workdir = Path(tmp)
        if args.keep_logs:
            workdir = args.out_dir / f"logs-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
            workdir.mkdir(parents=True)
            print(f"server and viewer logs: {workdir}")
        valkey = await start_valkey(workdir)
        mongo = EmbeddedMongo(workdir / "mongodb")
        try:
            mongodb_url = await mongo.start()
            ctx = Context(args, workdir, f"redis://127.0.0.1:{valkey.port}/0", mongodb_url, valkey)
            if args.commit:
                ctx.source = export_commit(args.commit, workdir / "src")
            for sc in runs:
                print(f"[{time.monotonic() - started:6.1f}s] ({sc.key}) {sc.server}: {sc.title}")
                try:
                    result = await (run_idle(ctx, sc) if sc.idle else run_flow(ctx, sc))
                except Exception as exc:  # one failed run must not hide the others
                    print(f"    FAILED: {type(exc).__name__}: {exc}")
                    result = {"scenario": asdict(sc), "error": f"{type(exc).__name__}: {exc}"}
                results.append(result)
        finally:
            await mongo.stop()
            await valkey.stop()
    verdicts = evaluate(results)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.fanout", *sys.argv[1:]]),
        "machine": machine(),
        "code": code,
        "wall_seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "liveshop_loop": args.liveshop_loop,
        "liveshop_gc_freeze": args.gc_freeze,
        "results": results,
        "targets": verdicts,
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out_dir / f"fanout-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nJSON: {out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--only", help="comma-separated scenarios among a,b,c,d,e")
    parser.add_argument("--viewers", type=int, help="viewers in a, b and d (2000)")
    parser.add_argument("--big-viewers", type=int, help="viewers in c (5000)")
    parser.add_argument("--idle-viewers", type=int, help="idle connections in e (2000)")
    parser.add_argument("--saturation-rate", type=float, default=50.0, help="msg/s in b (50)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (20)")
    parser.add_argument("--stall-duration", type=float, help="measured seconds in d (45)")
    parser.add_argument("--max-drain", type=float, help="seconds to wait for late deliveries (30)")
    parser.add_argument(
        "--drain-idle", type=float, default=5.0, help="stop waiting after this long with none"
    )
    parser.add_argument("--deflate", action="store_true", help="Liveshop flows with deflate on")
    parser.add_argument("--send-queue", type=int, help="LIVESHOP_SEND_QUEUE_FRAMES (256)")
    parser.add_argument(
        "--liveshop-loop",
        choices=["shipped", "uvloop"],
        default="shipped",
        help="shipped: `liveshop serve` as is; uvloop: the same CLI under uvloop's loop",
    )
    parser.add_argument(
        "--gc-log", action="store_true", help="log Liveshop's garbage collections over 5 ms"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="what-if: Liveshop with gc.freeze() every second (not what ships)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="in e, also trace Liveshop's Python allocations per idle connection",
    )
    parser.add_argument("--peer-loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument("--profile", action="store_true", help="py-spy the server in each flow")
    parser.add_argument(
        "--commit", help="run the server as of this commit (git archive), not the working tree"
    )
    parser.add_argument("--keep-logs", action="store_true", help="logs under --out-dir")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
