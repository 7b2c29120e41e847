"""A real two-member MongoDB replica set for tests whose secondary can be frozen.

A single-node set majority-commits every write at once. With two voting members the majority is
two, so while the secondary is stopped (`tests.servers.frozen`) the majority commit point cannot
advance: a document written with `w=1` is then seen by `local` reads and not by `majority` ones.
Keep a freeze under the election timeout (10 s): a primary that hears from no majority for
that long steps down.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

from server.adapters.mongo.embedded import find_mongod, free_port, log_tail, spawn

PAIR_SET = "pair0"
_START_SECONDS = 60.0
_ALREADY_INITIALIZED = 23  # an earlier replSetInitiate went through after all


@dataclass
class MongoPair:
    url: str  # replica set discovery, not a direct connection: the driver finds the primary
    primary_pid: int
    secondary_pid: int


@asynccontextmanager
async def mongo_pair(data_dir: Path) -> AsyncIterator[MongoPair]:
    """Member 0 (priority 1) leads; member 1 (priority 0, still voting) only follows, so the
    one to freeze is always member 1. Both are stopped on the way out."""
    mongod = find_mongod()
    ports = [free_port(), free_port()]
    processes: list[subprocess.Popen[bytes]] = []
    logs = [data_dir / f"mongod{n}.log" for n in range(2)]
    try:
        for n, port in enumerate(ports):
            db_path = data_dir / f"db{n}"
            db_path.mkdir(parents=True)
            argv = [str(mongod), "--replSet", PAIR_SET, "--bind_ip", "127.0.0.1"]
            argv += ["--port", str(port), "--dbpath", str(db_path)]
            argv += ["--wiredTigerCacheSizeGB", "0.25"]
            # failCommand, for answers a healthy set gives only at a bad moment.
            argv += ["--setParameter", "enableTestCommands=1"]
            # A primary stopping waits this long for an electable secondary to take over, and
            # member 1 never is one: no need to wait the default 15 s.
            argv += ["--setParameter", "shutdownTimeoutMillisForSignaledShutdown=0"]
            argv += ["--wiredTigerEngineConfigString", "log=(file_max=10MB)"]
            with logs[n].open("ab") as log:
                processes.append(spawn(argv, log))
        await _initiate(ports, processes, logs)
        yield MongoPair(
            url=f"mongodb://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/?replicaSet={PAIR_SET}",
            primary_pid=processes[0].pid,
            secondary_pid=processes[1].pid,
        )
    finally:
        await _stop(processes)


async def _initiate(
    ports: list[int], processes: list[subprocess.Popen[bytes]], logs: list[Path]
) -> None:
    """Initiate the set and wait until member 0 is primary and member 1 a secondary (only
    then can a majority, both of them, confirm a write)."""
    deadline = time.monotonic() + _START_SECONDS
    members = [
        {"_id": n, "host": f"127.0.0.1:{port}", "priority": 1 - n, "votes": 1}
        for n, port in enumerate(ports)
    ]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "127.0.0.1", ports[0], directConnection=True, serverSelectionTimeoutMS=250
    )
    initiated = False
    try:
        while True:
            for process, log in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"mongod exited ({process.returncode}):\n{log_tail(log)}")
            try:
                if not initiated:
                    config = {"_id": PAIR_SET, "members": members}
                    try:
                        await client.admin.command("replSetInitiate", config)
                    except OperationFailure as exc:
                        if exc.code != _ALREADY_INITIALIZED:
                            raise  # e.g. member 1 not answering yet: try again
                    initiated = True
                status = await client.admin.command("replSetGetStatus")
                states = [m["stateStr"] for m in status["members"]]
                if states == ["PRIMARY", "SECONDARY"]:
                    return
                if states[0] == "SECONDARY":
                    # Now, rather than after the 10 s election timeout.
                    await client.admin.command("replSetStepUp")
            except PyMongoError:
                pass  # not answering yet, or the set is still electing
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pair did not elect a primary:\n{log_tail(logs[0])}")
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 30
    for process in processes:
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
            await asyncio.sleep(0.05)
