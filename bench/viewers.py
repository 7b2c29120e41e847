"""The receiving side of the fan-out bench: N viewers of one room, all in this one process.

Driven by `bench.fanout` through JSON lines: commands on stdin, replies on stdout. Every chat
message carries `client_id` = "b<index>.<send time in monotonic ns>" (CLOCK_MONOTONIC is the
same clock in every process of the machine), so each delivery is timed where it lands.

Commands: grow {n}, reset {from_idx}, count, stats, resume_stalled {wait}, quit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
from array import array
from collections import Counter, defaultdict
from typing import Any

from bench.wsclient import LiveshopClient, SocketIOClient, WsClient, open_client

MARK = re.compile(rb'"client_id":"b(\d+)\.(\d+)"')
BUCKET_NS = 100_000_000  # deliveries are also counted per 100 ms, to get rates inside a window
STALLED_RCVBUF = 4096


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    """Latency of every delivery of a message with index >= from_idx, in microseconds."""

    def __init__(self) -> None:
        self.from_idx = 1 << 62
        self.latency_us = array("q")
        self.index = array("q")  # the message index of each delivery, for per-message spreads
        self.buckets: defaultdict[int, int] = defaultdict(int)
        self.cpu0 = cpu_seconds()
        self.wall0 = time.monotonic()

    def reset(self, from_idx: int) -> None:
        self.from_idx = from_idx
        del self.latency_us[:]
        del self.index[:]
        self.buckets.clear()
        self.cpu0, self.wall0 = cpu_seconds(), time.monotonic()

    def handler(self, *, batch: bool = False) -> Any:
        """The per-delivery hot path, with everything it touches bound to locals."""
        search = MARK.search
        finditer = MARK.finditer
        append = self.latency_us.append
        append_index = self.index.append
        buckets = self.buckets
        recorder = self

        def record_batch(client: WsClient, payload: bytes, now: int) -> None:
            # One frame may carry several chat messages: each is a delivery.
            for found in finditer(payload):
                index = int(found[1])
                if index < recorder.from_idx:
                    continue
                append((now - int(found[2])) // 1000)
                append_index(index)
                client.count += 1
                buckets[now // BUCKET_NS] += 1

        def record(client: WsClient, payload: bytes, now: int) -> None:
            found = search(payload)
            if found is None:
                return
            index = int(found[1])
            if index < recorder.from_idx:
                return
            append((now - int(found[2])) // 1000)
            append_index(index)
            client.count += 1
            buckets[now // BUCKET_NS] += 1

        return record_batch if batch else record


def percentiles(values: Any, prefix: str = "") -> dict[str, float | None]:
    """p50, p90, p99, p99.9 and max in ms of microsecond values."""
    names = [f"{prefix}{name}_ms" for name in ("p50", "p90", "p99", "p999", "max")]
    if not values:
        return dict.fromkeys(names)
    ordered = sorted(values)
    n = len(ordered)
    picks = [ordered[min(n - 1, int(q * n))] for q in (0.50, 0.90, 0.99, 0.999)] + [ordered[-1]]
    return {name: round(us / 1000.0, 2) for name, us in zip(names, picks, strict=True)}


def per_message(latency_us: array[int], index: array[int]) -> dict[str, Any]:
    """How long the first viewer waited for each message, and how long the last one waited
    after the first (the time the server took to walk the room)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, us in zip(index, latency_us, strict=True):
        if us < first.get(i, 1 << 62):
            first[i] = us
        if us > last.get(i, -1):
            last[i] = us
    spread = [last[i] - first[i] for i in first]
    return {
        **percentiles(list(first.values()), "first_"),
        **percentiles(spread, "spread_"),
        "timeline": [[i, first[i] // 1000, last[i] // 1000] for i in sorted(first)],
    }


class Viewers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.recorder = Recorder()
        self.viewers: list[WsClient] = []
        self.stalled: list[WsClient] = []
        self.failed = 0
        self.stalled_at: float | None = None
        self._tokens = _token_factory(args.proto)

    def _client(self, index: int, *, stalled: bool = False) -> WsClient:
        args = self.args
        name = f"stalled-{index}" if stalled else f"viewer-{index}"
        if args.proto == "socketio":
            return SocketIOClient(args.host, args.port, {"room": args.room, "user": name})
        token = None if args.anonymous else self._tokens(name)
        return LiveshopClient(
            args.host, args.port, args.room, token, deflate=args.deflate, batch=args.batch
        )

    async def grow(self, n: int) -> dict[str, Any]:
        started = time.monotonic()
        gate = asyncio.Semaphore(self.args.concurrency)
        handler = self.recorder.handler(batch=self.args.batch)
        first = len(self.viewers)

        async def one(index: int) -> WsClient | None:
            async with gate:
                for _attempt in range(3):
                    client = self._client(index)
                    client.on_event = handler
                    try:
                        await open_client(client)
                        return client
                    except (TimeoutError, OSError):
                        if client.transport is not None:
                            client.transport.abort()
                        await asyncio.sleep(0.2)
                self.failed += 1
                return None

        opened = await asyncio.gather(*(one(first + i) for i in range(n)))
        self.viewers.extend(c for c in opened if c is not None)
        return {
            "event": "ready",
            "viewers": len(self.viewers),
            "failed": self.failed,
            "seconds": round(time.monotonic() - started, 2),
        }

    async def add_stalled(self, n: int) -> None:
        for index in range(n):
            client = self._client(index, stalled=True)
            await open_client(client, rcvbuf=STALLED_RCVBUF)
            client.pause_reading()  # from here on it reads nothing: the server's buffers fill
            self.stalled.append(client)
            self.stalled_at = time.monotonic()

    def stats(self) -> dict[str, Any]:
        rec = self.recorder
        counts = [c.count for c in self.viewers]
        closes = Counter(c.closed.result() for c in self.viewers if c.closed.done())
        return {
            "event": "stats",
            "delivered": len(rec.latency_us),
            **percentiles(rec.latency_us),
            **per_message(rec.latency_us, rec.index),
            "buckets": sorted(rec.buckets.items()),
            "bucket_ns": BUCKET_NS,
            "cpu_seconds": round(cpu_seconds() - rec.cpu0, 3),
            "wall_seconds": round(time.monotonic() - rec.wall0, 3),
            "viewers": len(self.viewers),
            "open": sum(1 for c in self.viewers if not c.closed.done()),
            "closes": {str(code): n for code, n in closes.items()},
            "per_viewer_min": min(counts, default=0),
            "per_viewer_max": max(counts, default=0),
        }

    async def resume_stalled(self, wait: float) -> dict[str, Any]:
        """Read again and see what the server did meanwhile: closed us (which code), or not."""
        report = []
        for client in self.stalled:
            closed_before = client.closed.done()
            frames_before = client.frames
            newest = [-1]

            def note(c: WsClient, payload: bytes, now: int, newest: list[int] = newest) -> None:
                found = MARK.search(payload)
                if found is not None:
                    newest[0] = max(newest[0], int(found[1]))

            client.on_event = note
            resumed = time.monotonic()
            client.resume_reading()
            try:
                code: int | None = await asyncio.wait_for(asyncio.shield(client.closed), wait)
            except TimeoutError:
                code = None
            report.append(
                {
                    "closed_while_stalled": closed_before,
                    "close_code": code,
                    "seconds_to_close_after_resume": (
                        round(time.monotonic() - resumed, 2) if code is not None else None
                    ),
                    "frames_before_resume": frames_before,
                    "frames_after_resume": client.frames - frames_before,
                    "bytes_in": client.bytes_in,
                    "newest_index_seen": newest[0],
                }
            )
        return {"event": "stalled", "clients": report}

    def close_all(self) -> None:
        for client in [*self.viewers, *self.stalled]:
            if client.transport is not None:
                client.transport.abort()


def _token_factory(proto: str) -> Any:
    if proto == "socketio":
        return lambda name: None
    from server.auth import issue_token
    from server.domain.identity import Role

    secret = os.environ["LIVESHOP_SECRET"]
    return lambda name: issue_token(secret, name, Role.SHOPPER, name=name, ttl_seconds=6 * 3600)


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    viewers = Viewers(args)
    loop = asyncio.get_running_loop()
    ready = await viewers.grow(args.n)
    if args.stalled:
        await viewers.add_stalled(args.stalled)
    emit({**ready, "stalled": len(viewers.stalled), "stalled_at": viewers.stalled_at})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        name = command["cmd"]
        if name == "grow":
            emit(await viewers.grow(int(command["n"])))
        elif name == "reset":
            viewers.recorder.reset(int(command["from_idx"]))
            emit({"event": "reset"})
        elif name == "count":
            emit({"event": "count", "delivered": len(viewers.recorder.latency_us)})
        elif name == "stats":
            emit(viewers.stats())
        elif name == "resume_stalled":
            emit(await viewers.resume_stalled(float(command.get("wait", 10))))
        elif name == "quit":
            break
    viewers.close_all()
    emit({"event": "bye"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--proto", choices=["liveshop", "socketio"], default="liveshop")
    parser.add_argument("--n", type=int, default=0, help="viewers to connect at start")
    parser.add_argument("--stalled", type=int, default=0, help="viewers that stop reading")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--batch", action="store_true", help="Liveshop's ?batch=1 extension")
    parser.add_argument("--anonymous", action="store_true", help="viewers without a token")
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:  # pragma: no cover
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
