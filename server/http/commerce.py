"""Flash offers, claims and orders over HTTP.

`POST /rooms/{id}/offers` (the host), `GET /rooms/{id}/offers` (anyone: newest first),
`GET /offers/{id}`, `POST /offers/{id}/stop` (the host),
`POST /offers/{id}/claims` with an `Idempotency-Key` header, `GET /orders/{id}`, `GET /orders`
(mine, or `?room_id=` for the room's host or an admin; a page of `limit`, the next one through
`?cursor=` with the answer's `next_cursor`), `POST /orders/{id}/cancel` (the buyer).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from schemas.commerce import (
    IDEMPOTENCY_KEY,
    IDEMPOTENCY_KEY_RULE,
    ClaimIn,
    OfferIn,
    OrderListQuery,
    offer_to_wire,
    order_to_wire,
)
from server.domain.errors import InvalidInput, LiveshopError
from server.http.deps import (
    container_of,
    identity_of,
    json_body,
    location,
    location_of,
    metrics_of,
    no_body,
    query_params,
    require_identity,
    single_header,
)
from server.http.errors import problem_for

ORDERS_PATH = "api/v1/orders"  # under the app's root; see routes() and app.py's Mount


async def launch_offer(request: Request) -> JSONResponse:
    who = require_identity(request)
    key = _idempotency_key(request)  # optional: a launch sent again is safe
    body = await json_body(request, OfferIn)
    service = container_of(request).offer_service
    launched = await service.launch(
        request.path_params["room_id"],
        who,
        product_id=body.product_id,
        price=body.price.to_money(),
        quantity=body.quantity,
        per_user_limit=body.per_user_limit,
        countdown_seconds=body.countdown_seconds,
        duration_seconds=body.duration_seconds,
        idempotency_key=key,
    )
    headers = {"Location": location_of(request, "get_offer", offer_id=launched.offer.id)}
    if key is not None:
        headers["Idempotent-Replayed"] = "false" if launched.created else "true"
    # As it is now: a launch sent again may find it sold or ended since.
    answer = offer_to_wire(launched.offer, launched.stock)
    return JSONResponse(answer, status_code=201, headers=headers)


async def room_offers(request: Request) -> JSONResponse:
    identity_of(request)  # open to anyone, but a token that is sent must be good
    service = container_of(request).offer_service
    offers = await service.in_room(request.path_params["room_id"])
    return JSONResponse({"items": [offer_to_wire(offer, stock) for offer, stock in offers]})


async def get_offer(request: Request) -> JSONResponse:
    identity_of(request)  # open to anyone, but a token that is sent must be good
    offer, stock = await container_of(request).offer_service.view(request.path_params["offer_id"])
    return JSONResponse(offer_to_wire(offer, stock))


async def stop_offer(request: Request) -> JSONResponse:
    who = require_identity(request)
    await no_body(request)
    service = container_of(request).offer_service
    offer = await service.stop(request.path_params["offer_id"], who)
    _, stock = await service.view(offer.id)
    return JSONResponse(offer_to_wire(offer, stock))


async def claim_offer(request: Request) -> Response:
    started = time.perf_counter()
    claims = metrics_of(request).http_claims
    try:
        response, created = await _claim(request)
    except LiveshopError as exc:
        # Most claims in a flash sale are refused (sold out). Answering them here, with the
        # exception handler's own mapping, skips unwinding through Starlette's routing and its
        # handler lookup. Like Starlette's handler, drop the traceback: its frames (the
        # service's) hold the error itself, a cycle only the garbage collector would free.
        exc.__traceback__ = None
        claims.record(exc.code, started)
        return problem_for(exc)
    claims.record("order" if created else "replayed", started)
    return response


async def _claim(request: Request) -> tuple[JSONResponse, bool]:
    who = require_identity(request)
    key = _idempotency_key(request)
    if key is None:
        raise _bad_idempotency_key()
    body = await json_body(request, ClaimIn)
    order, created = await container_of(request).order_service.claim(
        request.path_params["offer_id"],
        who,
        quantity=body.quantity,
        idempotency_key=key,
        address=body.shipping_address.to_address(),
    )
    # Built, not looked up: url_for walks every route (raising NoMatchFound for each miss),
    # which costs a flash sale's hottest path more than building the order's answer.
    order_url = location(request, f"/{ORDERS_PATH}/{order.id}")
    # A retry gets the same order back; 201 either way, as the first answer was.
    headers = {"Location": order_url, "Idempotent-Replayed": "false" if created else "true"}
    return JSONResponse(order_to_wire(order), status_code=201, headers=headers), created


async def get_order(request: Request) -> JSONResponse:
    who = require_identity(request)
    order = await container_of(request).order_service.get(request.path_params["order_id"], who)
    return JSONResponse(order_to_wire(order))


async def list_orders(request: Request) -> JSONResponse:
    who = require_identity(request)
    query = query_params(request, OrderListQuery)
    page = await container_of(request).order_service.list(
        who, room_id=query.room_id, limit=query.limit, cursor=query.cursor
    )
    return JSONResponse(
        {"items": [order_to_wire(order) for order in page.items], "next_cursor": page.next_cursor}
    )


async def cancel_order(request: Request) -> JSONResponse:
    who = require_identity(request)
    await no_body(request)
    order = await container_of(request).order_service.cancel(request.path_params["order_id"], who)
    return JSONResponse(order_to_wire(order))


def _idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key (one at most), None without one."""
    key = single_header(request, "idempotency-key", _bad_idempotency_key)
    if key is not None and IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise _bad_idempotency_key()
    return key


def _bad_idempotency_key() -> InvalidInput:
    return InvalidInput(
        f"send one Idempotency-Key header ({IDEMPOTENCY_KEY_RULE})", code="invalid_idempotency_key"
    )


async def room_offers_resource(request: Request) -> JSONResponse:
    # One route for both methods, so a wrong method hears all of GET, HEAD and POST in `Allow`.
    if request.method == "POST":
        return await launch_offer(request)
    return await room_offers(request)


def routes() -> list[BaseRoute]:
    return [
        # Claims first: the router tries each route in turn, and a flash sale is mostly claims.
        # No two of these paths overlap, so the order changes nothing else.
        Route("/offers/{offer_id}/claims", claim_offer, methods=["POST"], name="claim_offer"),
        Route(
            "/rooms/{room_id}/offers",
            room_offers_resource,
            methods=["GET", "POST"],
            name="room_offers",
        ),
        Route("/offers/{offer_id}", get_offer, methods=["GET"], name="get_offer"),
        Route("/offers/{offer_id}/stop", stop_offer, methods=["POST"], name="stop_offer"),
        Route("/orders", list_orders, methods=["GET"], name="list_orders"),
        Route("/orders/{order_id}", get_order, methods=["GET"], name="get_order"),
        Route("/orders/{order_id}/cancel", cancel_order, methods=["POST"], name="cancel_order"),
    ]
