"""The OpenAPI document for /api/v1, with request bodies taken from the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, TypeAdapter

from schemas.answers import ANSWERS
from schemas.commerce import IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_RULE, ClaimIn, OfferIn
from schemas.http import BlockedWordsIn, ProductIn, RoomIn, ShowcaseIn, SlowModeIn, StockIn
from server.domain.rooms import RoomStatus
from server.http.deps import MAX_BODY_BYTES
from server.http_head import MAX_HEAD_BYTES, READ_SECONDS

_REF = "#/components/schemas/{model}"
_PROBLEM = {"$ref": _REF.format(model="Problem")}


def _problem(text: str, **headers: dict[str, Any]) -> dict[str, Any]:
    answer = {"description": text, "content": {"application/problem+json": {"schema": _PROBLEM}}}
    return {**answer, "headers": headers} if headers else answer


def _answer_header(text: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": text, "schema": schema or {"type": "string"}}


_LOCATION = _answer_header("Where what was made is read again")
_REPLAYED = _answer_header(
    "`true` when the request was sent again with its key and this is the first one's answer",
    {"enum": ["true", "false"]},
)
# Headers of successful answers, beyond the body.
_SUCCESS_HEADERS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/products"): {"Location": _LOCATION},
    ("post", "/rooms"): {"Location": _LOCATION},
    ("post", "/rooms/{room_id}/offers"): {
        "Location": _LOCATION,
        "Idempotent-Replayed": {
            **_REPLAYED,
            "description": f"With an Idempotency-Key only: {_REPLAYED['description']}",
        },
    },
    ("post", "/offers/{offer_id}/claims"): {
        "Location": _LOCATION,
        "Idempotent-Replayed": _REPLAYED,
    },
}


_NOT_JSON = _problem("A body whose Content-Type is not JSON")
_ERRORS = {
    str(status): _problem(text)
    for status, text in (
        (400, "Malformed request"),
        (403, "Not allowed"),
        (404, "Not found"),
        (408, f"The request did not arrive whole within {READ_SECONDS:g} seconds"),
        (409, "Conflicts with the current state"),
        (413, f"Body larger than {MAX_BODY_BYTES // 1024} KiB"),
        (431, f"Request line and headers larger than {MAX_HEAD_BYTES // 1024} KiB"),
        (422, "Invalid fields"),
    )
}
_ERRORS["401"] = _problem(
    "Missing or invalid token", **{"WWW-Authenticate": _answer_header("`Bearer`")}
)
_ERRORS["503"] = _problem(
    "A backend is away or too slow: send it again after Retry-After",
    **{"Retry-After": _answer_header("Seconds to wait", {"type": "string", "pattern": "^[0-9]+$"})},
)


def _idempotency_key(required: bool, text: str) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": required,
        "description": f"{text}; {IDEMPOTENCY_KEY_RULE}",
        "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
    }


def _query(name: str, schema: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    if text is not None:
        parameter["description"] = text
    return parameter


_LIMIT = {"type": "integer", "minimum": 1}
_CURSOR = _query(
    "cursor",
    {"type": "string"},
    "The `next_cursor` of the previous page, as it came: the page after it. Anything"
    " else answers 422 `invalid_cursor`",
)
# Parameters beyond the path's own.
_MORE_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/rooms"): [
        _query("status", {"enum": [status.value for status in RoomStatus]}),
        _query("limit", {**_LIMIT, "maximum": 100, "default": 20}, "Rooms per page"),
        _CURSOR,
    ],
    ("get", "/orders"): [
        _query(
            "room_id",
            {"type": "string", "minLength": 1, "maxLength": 64},
            "The room's orders instead of mine: for its host or an admin (403 for anyone else,"
            " 404 for an unknown room)",
        ),
        _query("limit", {**_LIMIT, "maximum": 200, "default": 50}, "Orders per page"),
        _CURSOR,
    ],
    ("post", "/rooms/{room_id}/offers"): [
        _idempotency_key(False, "The same key sent again gets the same offer"),
    ],
    ("post", "/offers/{offer_id}/claims"): [
        _idempotency_key(True, "The same key sent again gets the same order"),
    ],
}

# (method, path, summary, request model, success status, what it answers: schemas.answers)
_OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, int, str]] = [
    ("post", "/products", "Create a product", ProductIn, 201, "Product"),
    ("get", "/products/{product_id}", "Get a product", None, 200, "Product"),
    ("patch", "/products/{product_id}", "Set a product's stock", StockIn, 200, "Product"),
    ("post", "/rooms", "Create a room", RoomIn, 201, "Room"),
    ("get", "/rooms", "List rooms, newest first, paged", None, 200, "RoomPage"),
    ("get", "/rooms/{room_id}", "Get a room", None, 200, "Room"),
    ("post", "/rooms/{room_id}/start", "Go live", None, 200, "Room"),
    ("post", "/rooms/{room_id}/end", "End the room", None, 200, "Room"),
    ("post", "/rooms/{room_id}/showcase", "Pin a product", ShowcaseIn, 200, "Room"),
    ("post", "/rooms/{room_id}/slow-mode", "Set slow mode", SlowModeIn, 200, "Room"),
    ("put", "/rooms/{room_id}/blocked-words", "Set blocked words", BlockedWordsIn, 200, "Room"),
    ("get", "/rooms/{room_id}/stats", "Live figures for the host", None, 200, "RoomStats"),
    ("post", "/rooms/{room_id}/offers", "Launch a flash offer", OfferIn, 201, "Offer"),
    (
        "get",
        "/rooms/{room_id}/offers",
        "The room's offers, newest first, each with its remaining stock",
        None,
        200,
        "OfferList",
    ),
    ("get", "/offers/{offer_id}", "Get an offer and its remaining stock", None, 200, "Offer"),
    ("post", "/offers/{offer_id}/stop", "Stop an offer", None, 200, "Offer"),
    ("post", "/offers/{offer_id}/claims", "Claim", ClaimIn, 201, "Order"),
    ("get", "/orders", "My orders, or a room's (its host), paged", None, 200, "OrderPage"),
    ("get", "/orders/{order_id}", "Get an order", None, 200, "Order"),
    ("post", "/orders/{order_id}/cancel", "Cancel an order pending payment", None, 200, "Order"),
]


# Reads anyone may make (a bad token is still refused): a room's page is open to every viewer.
_OPEN_TO_ANYONE = {
    ("get", "/products/{product_id}"),
    ("get", "/rooms"),
    ("get", "/rooms/{room_id}"),
    ("get", "/rooms/{room_id}/offers"),
    ("get", "/offers/{offer_id}"),
}


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
                "starts_at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "With `offer_not_active` for a claim during the offer's"
                    " countdown: when it starts (absent once it has ended)",
                },
            },
        },
    }
    for answer_type in ANSWERS:  # built here, once, rather than at every start-up
        schema = TypeAdapter(answer_type).json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[answer_type.__name__] = schema
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, model, status, answer_name in _OPERATIONS:
        answer = {"$ref": _REF.format(model=answer_name)}
        success = {"description": "OK", "content": {"application/json": {"schema": answer}}}
        if (method, path) in _SUCCESS_HEADERS:
            success["headers"] = _SUCCESS_HEADERS[(method, path)]
        operation: dict[str, Any] = {
            "summary": summary,
            # An empty requirement is OpenAPI's way of saying "or no token at all".
            "security": [{}, {"bearer": []}]
            if (method, path) in _OPEN_TO_ANYONE
            else [{"bearer": []}],
            "responses": {str(status): success, **_ERRORS},
        }
        if model is not None:
            schema = model.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            operation["responses"]["415"] = _NOT_JSON
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                    }
                },
            }
        parameters = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in path.split("/")
            if part.startswith("{")
        ]
        parameters += _MORE_PARAMETERS.get((method, path), [])
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Liveshop", "version": "1"},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
