"""Operations endpoints: health, readiness, metrics, the OpenAPI document, room figures."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.domain.errors import Unavailable
from server.domain.money import Money
from server.domain.rooms import ensure_can_manage
from server.http.deps import container_of, metrics_of, require_identity
from server.http.openapi import openapi_document

if TYPE_CHECKING:
    from channels.broker import Counters

READY_TIMEOUT_SECONDS = 2.0
_RATIO = Decimal("0.0001")


async def healthz(_: Request) -> JSONResponse:
    """The process is up and serving (liveness)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: MongoDB and the broker answer and the server is not draining; and
    "degraded" (still 200) while the stock's Redis fails its checks (rights, no eviction) or has
    yet to pass them: that Redis is every process's, and taking each out of rotation would
    stop the whole shop, not only the claims it refuses meanwhile."""
    container = container_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("mongodb", container.rooms.ping), ("broker", container.hub.broker.ping)):
        try:
            await asyncio.wait_for(probe(), READY_TIMEOUT_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            # What the client library saw (ConnectionError, ...), not the 503 it became.
            seen = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
            checks[name] = f"unavailable: {type(seen).__name__}"
    if container.redis_checks is not None:
        # Its last verdict: "ok", "refused: <why>", or "unchecked" (a start-up that could not
        # ask it, until housekeeping does). Redis away shows in the broker's entry, not here.
        checks["stock"] = container.redis_checks.status
    if container.hub.draining:
        checks["server"] = "draining"
    ready = all(value == "ok" for name, value in checks.items() if name != "stock")
    status = "ready" if checks.get("stock", "ok") == "ok" else "degraded"
    return JSONResponse(
        {"status": status if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    text = metrics_of(request).render()
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(_: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


async def room_stats(request: Request) -> JSONResponse:
    """Live figures for the room's host: viewers now and peak, likes, orders and units per
    offer, GMV per currency (paid orders) and claim-to-paid conversion.

    `orders` and `units` are those still standing (not cancelled or expired), `orders_placed`
    every order ever placed; conversion is paid orders over orders placed."""
    container = container_of(request)
    who = require_identity(request)
    room = await container.rooms.get(request.path_params["room_id"])
    ensure_can_manage(room, who, "see its figures")
    try:
        counters: Counters | None = await container.hub.broker.read_counters(room.id)
    except Unavailable:  # Redis away: the figures MongoDB holds still answer
        counters = None
    figures = await container.offer_service.figures_in_room(room.id)
    every_offer = figures.every_offer
    orders = sum(f.orders for f in every_offer)
    placed = sum(f.placed for f in every_offer)
    paid = sum(f.paid_orders for f in every_offer)
    gmv: dict[str, Decimal] = {}
    for offer_figures in every_offer:
        for currency, amount in offer_figures.gmv.items():
            gmv[currency] = gmv.get(currency, Decimal(0)) + amount
    body: dict[str, Any] = {
        "room_id": room.id,
        "status": room.status.value,
        # Counted in Redis; null while it is away (`live_counters` false).
        "viewers": None if counters is None else counters.viewers,
        # Redis's, unless a restart lost them, or a day after the show they expired, or it is
        # away: then as last kept (RoomStore.keep_counters).
        "peak_viewers": max(counters.peak_viewers if counters else 0, room.kept_peak_viewers),
        "likes": max(counters.likes if counters else 0, room.kept_likes),
        "live_counters": counters is not None,
        "orders": orders,
        "orders_placed": placed,
        "paid_orders": paid,
        "conversion": None if placed == 0 else str((Decimal(paid) / placed).quantize(_RATIO)),
        "gmv": [Money(amount, currency).to_wire() for currency, amount in sorted(gmv.items())],
        "offers": [
            {
                "offer_id": f.offer_id,
                "orders": f.orders,
                "orders_placed": f.placed,
                "units": f.units,
                "paid_orders": f.paid_orders,
                "paid_units": f.paid_units,
                "gmv": [Money(a, c).to_wire() for c, a in sorted(f.gmv.items())],
            }
            for f in figures.offers
        ],
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
