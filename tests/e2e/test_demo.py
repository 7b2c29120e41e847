"""`liveshop demo` on a bare laptop: no Redis, no MongoDB URL, just a data directory."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.e2e.processes import LiveshopProcess, clean_env
from tests.e2e.wsclient import WsClient

DEMO_START_SECONDS = 90.0


def mongod_pids(data_dir: Path) -> list[int]:
    """Live (non-zombie) mongod processes whose command line names `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[:1]
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"mongod") or state == ["Z"]:
            continue
        if any(str(data_dir).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def _url_after(label: str, text: str) -> str:
    """The URL on the last line so labelled (the output file grows with each run)."""
    found = re.findall(rf"{re.escape(label)}\s+(\S+)", text)
    assert found, f"no {label!r} line in the demo's output:\n{text}"
    return str(found[-1])


async def _check_demo_room(demo: LiveshopProcess) -> str:
    """The printed shopper socket works: hello with a pinned product, chat echoes. Room id."""
    shopper_url = _url_after("shopper socket:", demo.stdout_text())
    assert shopper_url.startswith(f"ws://127.0.0.1:{demo.port}/ws/rooms/"), shopper_url
    room_id = shopper_url.split("/ws/rooms/")[1].split("?")[0]
    async with await WsClient.connect(shopper_url, name="demo-shopper") as shopper:
        hello = await shopper.hello()
        assert hello["room"]["status"] == "live", hello
        pinned = hello["room"]["pinned_product"]
        assert pinned is not None, hello["room"]
        assert pinned.get("id"), pinned
        assert hello["you"]["role"] == "shopper"
        assert hello["you"]["anonymous"] is False
        await shopper.send({"type": "chat.send", "text": "hi from the demo", "client_id": "d1"})
        message = await shopper.recv_until("chat.message")
        assert message["text"] == "hi from the demo"
        assert message["client_id"] == "d1"
        assert message["user"]["id"] == hello["you"]["user_id"]
    async with httpx.AsyncClient(base_url=demo.base_url, trust_env=False) as http:
        assert (await http.get("/readyz")).status_code == 200
        live = (await http.get("/api/v1/rooms", params={"status": "live"})).json()
        assert room_id in [room["id"] for room in live["items"]]
    return room_id


async def test_demo_runs_alone_and_stops_its_mongod(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(LIVESHOP_DATA_DIR=str(data_dir), LIVESHOP_COUNTER_INTERVAL="0.2")
    demo = LiveshopProcess(env, name="demo", command="demo", workdir=workdir)
    try:
        demo.start(DEMO_START_SECONDS)
        mongods = mongod_pids(data_dir)
        assert len(mongods) == 1, f"the demo should run one mongod of its own: {mongods}"
        room_id = await _check_demo_room(demo)
        # The demo host opens a room of their own, newer than the demo's.
        host = _url_after("host token (HTTP):  Authorization: Bearer", demo.stdout_text())
        async with httpx.AsyncClient(
            base_url=f"{demo.base_url}/api/v1",
            headers={"Authorization": f"Bearer {host}"},
            trust_env=False,
        ) as http:
            other = (await http.post("/rooms", json={"title": "Another show"})).json()["id"]
            assert (await http.post(f"/rooms/{other}/start")).status_code == 200

        demo.terminate()
        code = demo.wait(60)
        assert code is not None, "the demo did not stop on SIGTERM"
        assert mongod_pids(data_dir) == [], "the demo's mongod outlived it"
        lock = data_dir / "mongodb" / "db" / "mongod.lock"
        assert not lock.exists() or lock.read_text().strip() == "", "mongod did not stop cleanly"

        # A second run on the same data dir finds the same live room again, not the newer.
        demo.start(DEMO_START_SECONDS)
        assert await _check_demo_room(demo) == room_id
        demo.terminate()
        assert demo.wait(60) is not None
        assert mongod_pids(data_dir) == []
    finally:
        demo.close()
