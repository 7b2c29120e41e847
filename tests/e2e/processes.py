"""Real `liveshop` processes for the end-to-end tests.

Each `LiveshopProcess` runs the installed console script (the real CLI entry point) with an
environment of its own on a free port, its stdout and stderr captured to files. Every process
started here is remembered until it is closed, so a failing test can show their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlencode

import httpx

START_TIMEOUT_SECONDS = 40.0
STOP_TIMEOUT_SECONDS = 20.0
_LOG_TAIL_LINES = 40

_RUNNING: list[LiveshopProcess] = []


class ProcessStartError(RuntimeError):
    """A liveshop process did not become healthy."""


def liveshop_executable() -> Path:
    """The `liveshop` console script of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("liveshop")
    if beside.is_file():
        return beside
    found = shutil.which("liveshop")
    if found is None:
        raise ProcessStartError("the `liveshop` command is not installed (pip install -e .)")
    return Path(found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any LIVESHOP_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVESHOP_")}
    env.update(settings)
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """SIGTERM the child when the test run dies, so no server outlives a crashed pytest."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


def run_cli(
    args: list[str], env: Mapping[str, str], *, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short `liveshop` command to completion."""
    return subprocess.run(
        [str(liveshop_executable()), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class LiveshopProcess:
    """`liveshop serve` (or `demo`) on 127.0.0.1 (or `host`, which 127.0.0.1 reaches: `::`,
    `0.0.0.0`) and a free port."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        name: str = "liveshop",
        command: str = "serve",
        workdir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.command = command
        self.host = host
        self.env = dict(env)
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"liveshop-e2e-{name}-"))
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it is --------------------------------------------------------------------------

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ProcessStartError(f"{self.name} is not started")
        return f"http://127.0.0.1:{self.port}"

    def ws_url(
        self,
        room_id: str,
        token: str | None = None,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> str:
        query: dict[str, str] = {}
        if token is not None:
            query["token"] = token
        if since is not None:
            query["since"] = str(since)
        if epoch is not None:
            query["epoch"] = epoch
        base = self.base_url.replace("http://", "ws://", 1) + f"/ws/rooms/{room_id}"
        return f"{base}?{urlencode(query)}" if query else base

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ProcessStartError(f"{self.name} is not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    async def logged(self, event: str, within: float) -> bool:
        """Whether the process logs `event` within `within` seconds: a log line written after
        the change a test waited on (the change comes first) may not be there yet."""
        deadline = time.monotonic() + within
        while event not in self.stderr_text():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def describe(self) -> str:
        state = "running" if self.running else f"exited with {self.returncode}"
        return (
            f"{self.name} ({self.command}, port {self.port}, {state})\n"
            f"--- stderr tail ({self.stderr_path}):\n{_tail(self.stderr_path)}\n"
            f"--- stdout tail ({self.stdout_path}):\n{_tail(self.stdout_path)}"
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def spawn(self) -> None:
        """Launch without waiting; `wait_healthy` waits."""
        self.port = free_port()
        argv = [
            str(liveshop_executable()),
            self.command,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=_die_with_parent(),
            )
        if self not in _RUNNING:
            _RUNNING.append(self)

    def wait_healthy(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=1.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                if not self.running:
                    raise ProcessStartError(f"{self.name} exited early.\n{self.describe()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/healthz").status_code == 200:
                        return
                time.sleep(0.05)
        raise ProcessStartError(
            f"{self.name} not healthy within {timeout:.0f}s.\n{self.describe()}"
        )

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Self:
        # The free port may be taken before the server binds it; try another one then.
        for _attempt in range(3):
            self.spawn()
            try:
                self.wait_healthy(timeout)
                return self
            except ProcessStartError:
                if self.running or "address already in use" not in self.stderr_text().lower():
                    raise
        raise ProcessStartError(f"{self.name}: no free port after 3 attempts.\n{self.describe()}")

    def terminate(self) -> None:
        """SIGTERM, without waiting."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM and wait; SIGKILL when it does not exit in time. Returns the exit code."""
        if self._process is None:
            return None
        self.terminate()
        code = self.wait(timeout)
        if code is None:
            self._process.kill()
            code = self._process.wait()
        return code

    def close(self) -> None:
        """Stop, forget, and remove the working directory (logs included)."""
        self.stop()
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_all(processes: list[LiveshopProcess]) -> None:
    """Spawn every process first, then wait for each: they boot in parallel."""
    try:
        for process in processes:
            process.spawn()
        for process in processes:
            try:
                process.wait_healthy()
            except ProcessStartError:
                if process.running or "address already in use" not in process.stderr_text().lower():
                    raise
                process.start()
    except BaseException:
        for process in processes:
            process.close()
        raise


@contextlib.contextmanager
def running(processes: list[LiveshopProcess]) -> Iterator[list[LiveshopProcess]]:
    start_all(processes)
    try:
        yield processes
    finally:
        for process in processes:
            process.close()


def failure_sections() -> list[tuple[str, str]]:
    """Log tails of every process still known, for a failing test's report."""
    return [(f"liveshop process {p.name}", p.describe()) for p in _RUNNING]
