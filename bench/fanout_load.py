"""The fan-out benchmark's load: its scenarios, the viewers process and the chat senders."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/fanout.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runinfo import SECRET
from bench.servers import (
    REPO_ROOT,
    Child,
)
from bench.wsclient import LiveshopClient, SocketIOClient, WsClient, open_client
from server.auth import issue_token
from server.domain.identity import Role

# msg/s per sender socket. Chat comes from many people; and one socket's frames are handled one
# after another (each waits for its publish), so a fast single sender is a test of its own.
SENDER_RATE_EACH = 2.5


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    server: str  # "liveshop" or "socketio"
    viewers: int
    rate: float = 10.0
    duration: float = 20.0
    warmup: float = 3.0
    stalled: int = 0
    deflate: bool = False
    text_chars: int = 32
    wide_chars: bool = False  # 4-byte emoji text: ~2 KB frames at 500 characters
    idle: bool = False  # memory per idle connection instead of a message flow
    traced: bool = False  # idle run under tracemalloc: where the bytes go (its RSS is inflated)
    batch: bool = False  # viewers ask for Liveshop's `batch` frames (?batch=1, an extension)
    max_drain: float = 30.0
    drain_idle: float = 5.0


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    quick = args.quick
    n = args.viewers or (200 if quick else 2000)
    big = args.big_viewers or (500 if quick else 5000)
    idle_n = args.idle_viewers or (300 if quick else 2000)
    sat = args.saturation_rate
    duration = args.duration or (4.0 if quick else 20.0)
    # Long enough to see uvicorn's keepalive (ping every 20 s, 20 s to answer) act on the stall.
    stall_duration = args.stall_duration or (4.0 if quick else 45.0)
    warmup = 0.5 if quick else 3.0
    drain = args.max_drain or (10.0 if quick else 30.0)
    flow = {
        "duration": duration,
        "warmup": warmup,
        "max_drain": drain,
        "drain_idle": args.drain_idle,
    }
    stall = {**flow, "duration": stall_duration}
    # A fat stream (2 KB frames at 100 msg/s = 200 KB/s per socket) so the stalled socket's
    # kernel buffers (megabytes on loopback) fill and Liveshop's own send queue overflows.
    overflow_n = 50 if quick else 200
    overflow = {**flow, "duration": 20.0 if quick else 30.0, "text_chars": 500, "wide_chars": True}
    every = {
        "a": [Scenario("a", f"{n} viewers, 10 msg/s", "liveshop", n, 10, **flow)],
        "b": [
            Scenario("b", f"saturation {n} viewers, {sat:.0f} msg/s", "liveshop", n, sat, **flow),
            Scenario("b", f"saturation {n} viewers, {sat:.0f} msg/s", "socketio", n, sat, **flow),
        ],
        "c": [
            Scenario("c", f"{big} viewers, 20 msg/s", "liveshop", big, 20, **flow),
            Scenario(
                "c", f"{big} viewers, 20 msg/s, batch=1", "liveshop", big, 20, batch=True, **flow
            ),
        ],
        "d": [
            Scenario("d", f"{n} viewers, no stalled client", "liveshop", n, 10, **stall),
            Scenario("d", f"{n} viewers + 1 stalled", "liveshop", n, 10, stalled=1, **stall),
            Scenario(
                "d",
                f"{overflow_n} viewers + 1 stalled, 2 KB frames (queue overflow)",
                "liveshop",
                overflow_n,
                100,
                stalled=1,
                **overflow,
            ),
        ],
        "e": [
            Scenario("e", f"{idle_n} idle, deflate off", "liveshop", idle_n, idle=True),
            Scenario(
                "e", f"{idle_n} idle, deflate on", "liveshop", idle_n, idle=True, deflate=True
            ),
            Scenario("e", f"{idle_n} idle", "socketio", idle_n, idle=True),
        ],
    }
    if args.tracemalloc:
        traced = Scenario("e", f"{idle_n} idle, traced", "liveshop", idle_n, idle=True, traced=True)
        every["e"] += [traced, replace(traced, deflate=True)]
    chosen = [key.strip() for key in args.only.split(",")] if args.only else list(every)
    runs = [sc for key in chosen for sc in every[key]]
    if args.deflate:
        runs = [
            sc if sc.idle or sc.server != "liveshop" else replace(sc, deflate=True) for sc in runs
        ]
    return runs


class ViewersProcess:
    """`bench.viewers` in a child process, spoken to in JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls, server: Child, room_id: str, sc: Scenario, n: int, log_path: Path
    ) -> tuple[ViewersProcess, dict[str, Any]]:
        argv = [sys.executable, "-m", "bench.viewers", "--port", str(server.port)]
        argv += ["--room", room_id, "--proto", sc.server, "--n", str(n)]
        argv += ["--stalled", str(sc.stalled)]
        if sc.deflate:
            argv.append("--deflate")
        if sc.batch:
            argv.append("--batch")
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                env={**os.environ, "LIVESHOP_SECRET": SECRET},
                limit=64 * 1024 * 1024,
            )
        viewers = cls(process)
        return viewers, await viewers.read(limit_s=300)

    async def read(self, limit_s: float = 120) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), limit_s)
        if not line:
            raise RuntimeError("the viewers process exited; see its log in the run directory")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def cmd(self, cmd: str, limit_s: float = 120, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        await self.process.stdin.drain()
        return await self.read(limit_s)

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.cmd("quit", limit_s=30)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


class Sender:
    """Chats at a fixed rate over a few sockets; every message carries its index and send time."""

    def __init__(self, clients: list[WsClient], text_chars: int, *, wide: bool = False) -> None:
        self.clients = clients
        self.next_index = 0
        self.errors = 0
        self.last_error = ""
        filler = "\U0001f6cd\U0001f381" if wide else "live room fan-out benchmark, chat line "
        self.text = (filler * (text_chars // len(filler) + 1))[:text_chars].strip() or "hi"
        for client in clients:
            client.on_event = self._on_event

    def _on_event(self, client: WsClient, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"type":"error"'):
            self.errors += 1
            self.last_error = payload[:200].decode(errors="replace")

    async def run(self, rate: float, seconds: float) -> int:
        """Send for `seconds` on a fixed schedule (no drift); returns how many were sent."""
        interval, started, sent = 1.0 / rate, time.monotonic(), 0
        count = max(1, round(rate * seconds))
        clients = self.clients
        while sent < count:
            delay = started + sent * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            index = self.next_index
            client = clients[index % len(clients)]
            client.chat(self.text, f"b{index}.{time.monotonic_ns()}")  # type: ignore[attr-defined]
            self.next_index += 1
            sent += 1
        return sent

    def closes(self) -> dict[str, int]:
        """Close codes of sender sockets that the server closed during the run."""
        codes = [c.closed.result() for c in self.clients if c.closed.done()]
        return {str(code): codes.count(code) for code in set(codes)}

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()


async def open_senders(server: Child, sc: Scenario, room_id: str) -> Sender:
    count = max(1, math.ceil(sc.rate / SENDER_RATE_EACH))
    clients: list[WsClient] = []
    for i in range(count):
        client: WsClient
        if sc.server == "socketio":
            client = SocketIOClient(
                "127.0.0.1", server.port, {"room": room_id, "user": f"sender-{i}"}
            )
        else:
            token = issue_token(SECRET, f"sender-{i}", Role.SHOPPER, name=f"sender {i}")
            client = LiveshopClient("127.0.0.1", server.port, room_id, token, deflate=sc.deflate)
        await open_client(client)
        clients.append(client)
    return Sender(clients, sc.text_chars, wide=sc.wide_chars)
