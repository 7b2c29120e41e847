"""`/rooms`: create, read and list rooms; start, end, pin a product; slow mode and blocked words.

Reading is open to anyone (a bad token is still refused); changes need the room's host or an
admin, and for the settings also a moderator. `GET /rooms/{id}/stats` lives in ops.py, with health
and metrics.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from schemas.http import (
    BlockedWordsIn,
    RoomIn,
    RoomListQuery,
    ShowcaseIn,
    SlowModeIn,
    room_to_wire,
)
from server.domain.identity import Identity
from server.domain.products import Product
from server.domain.rooms import Room, can_moderate
from server.http.deps import (
    container_of,
    identity_of,
    json_body,
    location_of,
    no_body,
    query_params,
    require_identity,
)


async def _room_response(
    request: Request,
    room: Room,
    who: Identity | None,
    *,
    pinned: Product | None = None,
    status_code: int = 200,
) -> JSONResponse:
    if pinned is None and room.pinned_product_id is not None:
        found = await container_of(request).room_service.pinned_products([room])
        pinned = found.get(room.pinned_product_id)
    return JSONResponse(
        room_to_wire(room, pinned, show_settings=_sees_settings(room, who)),
        status_code=status_code,
    )


def _sees_settings(room: Room, who: Identity | None) -> bool:
    return who is not None and can_moderate(room.host_id, who)


async def create_room(request: Request) -> JSONResponse:
    who = require_identity(request)
    body = await json_body(request, RoomIn)
    room = await container_of(request).room_service.create_room(
        who, body.title, scheduled_at=body.scheduled_at, blocked_words=body.blocked_words
    )
    response = await _room_response(request, room, who, status_code=201)
    response.headers["Location"] = location_of(request, "get_room", room_id=room.id)
    return response


async def get_room(request: Request) -> JSONResponse:
    who = identity_of(request)
    room = await container_of(request).room_service.get_room(request.path_params["room_id"])
    return await _room_response(request, room, who)


async def list_rooms(request: Request) -> JSONResponse:
    who = identity_of(request)
    query = query_params(request, RoomListQuery)
    service = container_of(request).room_service
    page = await service.list_rooms(query.status, query.limit, query.cursor)
    rooms = page.items
    pinned = await service.pinned_products(rooms)
    items = [
        room_to_wire(
            room,
            pinned.get(room.pinned_product_id) if room.pinned_product_id else None,
            show_settings=_sees_settings(room, who),
        )
        for room in rooms
    ]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


async def start_room(request: Request) -> JSONResponse:
    who = require_identity(request)
    await no_body(request)
    service = container_of(request).room_service
    room = await service.start(request.path_params["room_id"], who)
    return await _room_response(request, room, who)


async def end_room(request: Request) -> JSONResponse:
    who = require_identity(request)
    await no_body(request)
    service = container_of(request).room_service
    room = await service.end(request.path_params["room_id"], who)
    return await _room_response(request, room, who)


async def pin_product(request: Request) -> JSONResponse:
    who = require_identity(request)
    body = await json_body(request, ShowcaseIn)
    service = container_of(request).room_service
    room, product = await service.pin(request.path_params["room_id"], body.product_id, who)
    return await _room_response(request, room, who, pinned=product)


async def set_slow_mode(request: Request) -> JSONResponse:
    who = require_identity(request)
    body = await json_body(request, SlowModeIn)
    service = container_of(request).room_service
    room = await service.set_slow_mode(request.path_params["room_id"], body.seconds, who)
    return await _room_response(request, room, who)


async def set_blocked_words(request: Request) -> JSONResponse:
    who = require_identity(request)
    body = await json_body(request, BlockedWordsIn)
    service = container_of(request).room_service
    room = await service.set_blocked_words(request.path_params["room_id"], body.words, who)
    return await _room_response(request, room, who)


async def rooms_collection(request: Request) -> JSONResponse:
    # One route for both methods, so a wrong method hears all of GET, HEAD and POST in `Allow`.
    if request.method == "POST":
        return await create_room(request)
    return await list_rooms(request)


def routes() -> list[BaseRoute]:
    return [
        Route("/rooms", rooms_collection, methods=["GET", "POST"], name="rooms"),
        Route("/rooms/{room_id}", get_room, methods=["GET"], name="get_room"),
        Route("/rooms/{room_id}/start", start_room, methods=["POST"], name="start_room"),
        Route("/rooms/{room_id}/end", end_room, methods=["POST"], name="end_room"),
        Route("/rooms/{room_id}/showcase", pin_product, methods=["POST"], name="pin_product"),
        Route("/rooms/{room_id}/slow-mode", set_slow_mode, methods=["POST"], name="set_slow_mode"),
        Route(
            "/rooms/{room_id}/blocked-words",
            set_blocked_words,
            methods=["PUT"],
            name="set_blocked_words",
        ),
    ]
