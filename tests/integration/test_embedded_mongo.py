"""EmbeddedMongo: a real mongod replica set that keeps its data across restarts and crashes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from server.adapters.mongo import embedded
from server.adapters.mongo.embedded import EmbeddedMongo, EmbeddedMongoError, free_port

Doc = dict[str, object]
REPO_ROOT = Path(__file__).resolve().parents[2]


async def _insert_in_transaction(url: str, doc: Doc) -> None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(url)
    try:
        async with client.start_session() as session, await session.start_transaction():
            await client.shop.orders.insert_one(doc, session=session)
    finally:
        await client.close()


async def _find(url: str, order_id: str) -> Doc | None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(url)
    try:
        return await client.shop.orders.find_one({"_id": order_id})
    finally:
        await client.close()


async def test_data_survives_a_clean_restart(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)
    began = time.monotonic()
    url = await mongo.start()
    print(f"first start: {time.monotonic() - began:.2f}s")  # visible with -s
    try:
        assert url.startswith("mongodb://127.0.0.1:")
        assert url.endswith("/?replicaSet=rs0")
        await _insert_in_transaction(url, {"_id": "o1", "total": "12.50"})
        assert await _find(url, "o1") == {"_id": "o1", "total": "12.50"}
    finally:
        await mongo.stop()
    assert mongo.pid is None

    began = time.monotonic()
    async with EmbeddedMongo(tmp_path) as again:
        print(f"restart on the same dir: {time.monotonic() - began:.2f}s")
        assert again.url == url  # the remembered port is reused
        assert await _find(again.url, "o1") == {"_id": "o1", "total": "12.50"}


async def test_recovers_after_a_crash_and_on_another_port(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)
    url = await mongo.start()
    await _insert_in_transaction(url, {"_id": "o2"})
    # Simulate a crash: the lock file keeps the dead pid, the replica set config the old port.
    assert mongo._process is not None
    os.kill(mongo._process.pid, signal.SIGKILL)
    mongo._process.wait()
    assert (tmp_path / "db" / "mongod.lock").read_text().strip()

    async with EmbeddedMongo(tmp_path, port=free_port()) as moved:
        assert moved.url != url
        assert await _find(moved.url, "o2") == {"_id": "o2"}
        await _insert_in_transaction(moved.url, {"_id": "o3"})  # and it is primary again


async def test_a_mongod_that_dies_is_started_again_at_the_url_its_clients_hold(
    tmp_path: Path,
) -> None:
    mongo = EmbeddedMongo(tmp_path)
    url = await mongo.start()
    mongo.keep_running(every=0.1)
    try:
        await _insert_in_transaction(url, {"_id": "o4"})
        died = mongo.pid
        assert died is not None
        os.kill(died, signal.SIGKILL)  # the OOM killer, say
        assert await _find(url, "o4") == {"_id": "o4"}  # the client waits for it, and finds it
        assert mongo.pid not in (None, died)
        await _insert_in_transaction(url, {"_id": "o5"})  # primary again
        assert (tmp_path / "mongod.exited.log").stat().st_size > 0  # why it died, kept
    finally:
        await mongo.stop()
    await asyncio.sleep(0.3)
    assert mongo.pid is None  # and nothing started again since


async def test_a_mongod_whose_files_are_gone_is_not_started_again_on_nothing(
    tmp_path: Path,
) -> None:
    mongo = EmbeddedMongo(tmp_path)
    await mongo.start()
    mongo.keep_running(every=0.05)
    try:
        died = mongo.pid
        assert died is not None
        # Frozen first: a running mongod writes new files while they are being removed.
        os.kill(died, signal.SIGSTOP)
        shutil.rmtree(mongo.db_path)  # an operator's mistake, a disk swapped
        os.kill(died, signal.SIGKILL)
        await asyncio.sleep(1.0)
        assert mongo.pid is None
        assert not mongo.db_path.exists(), "an empty database was started in its place"
    finally:
        await mongo.stop()


async def test_a_stop_during_a_restart_leaves_no_mongod(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)
    await mongo.start()
    mongo.keep_running(every=0.05)
    died = mongo.pid
    assert died is not None
    os.kill(died, signal.SIGKILL)
    for _ in range(500):  # until the restart is under way
        if mongo.pid not in (None, died):
            break
        await asyncio.sleep(0.01)
    starting = mongo.pid
    assert starting is not None
    await asyncio.wait_for(mongo.stop(), 30)
    await asyncio.sleep(0.3)
    assert mongo.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(starting, 0)  # what the restart had started is gone, not left running


async def test_a_data_dir_in_use_is_refused_clearly(tmp_path: Path) -> None:
    async with EmbeddedMongo(tmp_path) as running:
        with pytest.raises(EmbeddedMongoError, match=f"pid {running.pid}"):
            await EmbeddedMongo(tmp_path).start()
        assert await _find(running.url, "none") is None  # the first one is unharmed


async def test_mongod_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import asyncio, pathlib, sys\n"
        "from server.adapters.mongo.embedded import EmbeddedMongo\n"
        "async def main():\n"
        f"    mongo = EmbeddedMongo(pathlib.Path({str(tmp_path)!r}))\n"
        "    await mongo.start()\n"
        "    print(mongo.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT
    )
    try:
        assert parent.stdout is not None
        mongod_pid = int(await parent.stdout.readline())
    finally:
        parent.kill()  # SIGKILL: no Python cleanup runs, only the kernel's death signal
        await parent.wait()
    # mongod is not our child, so it cannot be reaped here: wait for the lock it releases.
    deadline = time.monotonic() + 30
    while embedded.live_lock_owner(tmp_path / "db") == mongod_pid:
        assert time.monotonic() < deadline, "mongod outlived its parent"
        await asyncio.sleep(0.1)


async def test_missing_binary_points_to_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedMongoError, match="LIVESHOP_MONGODB_URL"):
        await EmbeddedMongo(tmp_path / "data").start()


async def test_session_fixtures_give_a_private_database(
    mongodb_url: str, mongo_database_name: str
) -> None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongodb_url)
    try:
        assert mongo_database_name not in await client.list_database_names()
        await client[mongo_database_name].things.insert_one({"_id": 1})
        assert mongo_database_name in await client.list_database_names()
    finally:
        await client.close()
