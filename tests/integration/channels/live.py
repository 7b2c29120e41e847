"""A real uvicorn server on real Redis and MongoDB, and the clients the tests use on it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
import uvicorn
import websockets
from starlette.types import ASGIApp
from websockets.asyncio.client import ClientConnection

from server.app import create_app
from server.auth import issue_token
from server.domain.identity import Role
from server.http_head import HeadLimitedHttpToolsProtocol
from server.settings import Settings
from server.ws_protocol import GuardedWebSocketProtocol

SECRET = "test-only-secret-for-room-socket-tests"  # test-only key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(user: str, role: Role = Role.SHOPPER, ttl: int = 600) -> str:
    return issue_token(SECRET, user, role, name=user.title(), ttl_seconds=ttl)


@dataclass
class Live:
    base: str
    ws: str
    http: httpx.AsyncClient
    room_id: str

    def url(self, user: str | None = None, role: Role = Role.SHOPPER, **query: Any) -> str:
        params = dict(query)
        if user is not None:
            params["token"] = token(user, role)
        suffix = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.ws}/ws/rooms/{self.room_id}" + (f"?{suffix}" if suffix else "")

    async def host(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token('host-1', Role.HOST)}"}
        return await self.http.request(method, f"/api/v1{path}", json=body, headers=headers)


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[int]:
    """`app` on uvicorn, on a free port, with the protocols server/runner.py sets (the
    websocket's takes room frames directly); the port."""
    port = _free_port()
    config = uvicorn.Config(
        app,
        port=port,
        log_config=None,
        lifespan="on",
        http=HeadLimitedHttpToolsProtocol,
        ws=GuardedWebSocketProtocol,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
        assert not task.done(), "server failed to start"
    try:
        yield port
    finally:
        server.should_exit = True
        await stopped(task)


@pytest_asyncio.fixture
async def live(clean_redis: str, mongodb_url: str, mongo_database_name: str) -> AsyncIterator[Live]:
    settings = live_settings(clean_redis, mongodb_url, mongo_database_name)
    async with serving_live_room(create_app(settings)) as live:
        yield live


def live_settings(redis_url: str, mongodb_url: str, database: str) -> Settings:
    """A live room's server: real Redis and MongoDB, counters told every 0.1 s."""
    return Settings(
        secret=SECRET,
        redis_url=redis_url,
        mongodb_url=mongodb_url,
        mongodb_database=database,
        counter_interval=0.1,
        max_bad_frames=5,
    )


@contextlib.asynccontextmanager
async def serving_live_room(app: ASGIApp) -> AsyncIterator[Live]:
    """`app` served (`serving`), with a room of the host's, live."""
    async with serving(app) as port:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as http:
            live = Live(base, f"ws://127.0.0.1:{port}", http, "")
            created = await live.host("POST", "/rooms", {"title": "Test show"})
            assert created.status_code == 201, created.text
            live.room_id = created.json()["id"]
            assert (await live.host("POST", f"/rooms/{live.room_id}/start")).status_code == 200
            yield live


async def stopped(server: asyncio.Task[None], within: float = 30.0) -> None:
    """Wait for the server to stop; if it does not, fail showing what it is still waiting on
    (the test timeout would show only the event loop's own poll)."""
    done, _ = await asyncio.wait({server}, timeout=within)
    if done:
        server.result()
        return
    stuck = io.StringIO()
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            other.print_stack(limit=8, file=stuck)
    server.cancel()
    raise AssertionError(f"the server did not stop within {within} s:\n{stuck.getvalue()}")


async def recv(ws: ClientConnection, within: float = 3.0) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), within)))


async def recv_type(ws: ClientConnection, kind: str, within: float = 3.0) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            frame = await recv(ws, within)
            if frame["type"] == kind:
                return frame

    return await asyncio.wait_for(loop(), within)


async def frames_within(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every frame that arrives within `seconds`."""
    frames: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            frames.append(dict(json.loads(await asyncio.wait_for(ws.recv(), left))))
        except TimeoutError:
            break
    return frames


async def close_code(ws: ClientConnection, within: float = 3.0) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    except websockets.ConnectionClosed:
        return ws.close_code


@contextlib.asynccontextmanager
async def host_and(
    live: Live, user: str
) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """The room's host and a viewer, each socket past its hello."""
    async with (
        websockets.connect(live.url("host-1", Role.HOST)) as host,
        websockets.connect(live.url(user)) as viewer,
    ):
        await recv(host)
        await recv(viewer)
        yield host, viewer
