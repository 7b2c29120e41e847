"""Operations endpoints: health, readiness, metrics, the OpenAPI document, room figures."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.domain.rooms import ensure_can_manage
from server.http.deps import container_of, require_identity
from server.http.openapi import openapi_document
from server.metrics import Metrics

READY_TIMEOUT_SECONDS = 2.0


async def healthz(_: Request) -> JSONResponse:
    """The process is up and serving (liveness)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: MongoDB and the broker answer, and the server is not draining."""
    container = container_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("mongodb", container.rooms.ping), ("broker", container.hub.broker.ping)):
        try:
            await asyncio.wait_for(probe(), READY_TIMEOUT_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    if container.hub.draining:
        checks["server"] = "draining"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(_: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def room_stats(request: Request) -> JSONResponse:
    """Live figures for the room's host: viewers now and peak, likes."""
    container = container_of(request)
    who = require_identity(request)
    room = await container.rooms.get(request.path_params["room_id"])
    ensure_can_manage(room, who)
    counters = await container.hub.broker.read_counters(room.id)
    body: dict[str, Any] = {
        "room_id": room.id,
        "status": room.status.value,
        "viewers": counters.viewers,
        "peak_viewers": counters.peak_viewers,
        "likes": counters.likes,
    }
    return JSONResponse(body)


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def api_routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/rooms/{room_id}/stats", room_stats, methods=["GET"]),
    ]
