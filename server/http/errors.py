"""Every HTTP error leaves as application/problem+json (RFC 9457) with a stable `code`.

Install with `Starlette(exception_handlers=exception_handlers)`. Only errors the product chose to
report (LiveshopError, a pydantic ValidationError from parsing input, Starlette's routing errors)
say what went wrong; anything else is a bug and answers 500 without details.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from schemas.http import Faults, code_of_fields, faults_of, field_of
from server.domain.errors import InvalidInput, LiveshopError, Unauthorized, Unavailable

PROBLEM_JSON = "application/problem+json"
# What a 503 tells clients to wait before trying again (RFC 9110 10.2.3): a MongoDB failover, a
# Redis that comes back, a stock rebuild all take seconds. Claims are safe to send again with
# the same Idempotency-Key.
RETRY_AFTER_SECONDS = "1"

# Codes for Starlette's own errors (unknown route, wrong method, ...).
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class MalformedJson(LiveshopError):
    code = "malformed_json"
    status = 400


class PayloadTooLarge(LiveshopError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(LiveshopError):
    code = "unsupported_media_type"
    status = 415


class ClientGone(LiveshopError):
    """The client went away before its request's body arrived. Nobody hears the answer; it is
    an error of the client's network, not of the server, and is not logged as a crash."""

    code = "client_disconnected"
    status = 400


MAX_LISTED_ERRORS = 20


class InvalidRequest(InvalidInput):
    """A request that failed its schema; `errors` names each offending field."""

    def __init__(
        self, errors: list[dict[str, str]], code: str = InvalidInput.code, *, count: int = 0
    ) -> None:
        # In words, the first fault, as a websocket frame's error says it; `errors` lists the
        # first MAX_LISTED_ERRORS of `count` (64 KB of bad list items would be 30 times as much
        # answer, and as much of the server's time, listed whole).
        count = max(count, len(errors))
        first = errors[0] if errors else {"field": "", "message": "the request is invalid"}
        more = ""
        if count > len(errors):
            more = f" (and {count - 1} more: the first {len(errors)} are in errors)"
        elif count > 1:
            more = f" (and {count - 1} more: see errors)"
        super().__init__(f"{first['field'] or 'body'}: {first['message']}{more}", code=code)
        self.errors = errors

    @classmethod
    def from_faults(
        cls, found: Faults, field_codes: Mapping[str, str] | None = None
    ) -> InvalidRequest:
        """The first faults, with the code of `field_codes` that they all fall under, if any
        (RequestModel)."""
        errors = [
            {"field": field_of(error), "message": error["msg"], "type": error["type"]}
            for error in found[:MAX_LISTED_ERRORS]
        ]
        code = code_of_fields(map(field_of, found), field_codes or {})
        return cls(errors, code or InvalidInput.code, count=len(found))


# Starlette's JSONResponse calls json.dumps with its options, which builds a new encoder for
# every response; a refused claim is mostly this response, so problems share one encoder.
# Same options as Starlette's, so the same bytes.
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        return _encode_json(content).encode("utf-8")


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    if extra:
        return ProblemResponse(_problem(status, code, detail, extra), status, headers)
    return Response(_plain_problem(status, code, detail), status, headers, PROBLEM_JSON)


def _problem(status: int, code: str, detail: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


# A flash sale answers thousands of claims with the same few problems (sold out, limit reached,
# not yet started): each is rendered once. Bounded, since a detail may name an id.
@functools.lru_cache(maxsize=256)
def _plain_problem(
    status: int, code: str, detail: str, details: tuple[tuple[str, str], ...] = ()
) -> bytes:
    return _encode_json(_problem(status, code, detail, dict(details))).encode("utf-8")


def problem_for(exc: LiveshopError) -> Response:
    """The answer to a product error: the one mapping, used by the exception handler and by
    hot endpoints that answer their own errors (see commerce.claim_offer)."""
    headers: dict[str, str] | None = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, Unavailable):
        headers = {"Retry-After": RETRY_AFTER_SECONDS}
    if isinstance(exc, InvalidRequest):
        extra = {**exc.details, "errors": exc.errors}
        return problem(exc.status, exc.code, exc.message, headers=headers, **extra)
    details = tuple(exc.details.items())
    body = _plain_problem(exc.status, exc.code, exc.message, details)
    return Response(body, exc.status, headers, PROBLEM_JSON)


async def _liveshop_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LiveshopError)
    return problem_for(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return await _liveshop_error(request, InvalidRequest.from_faults(faults_of(exc)))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return problem(exc.status_code, code, exc.detail, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware re-raises after this answer, so the server logs the
    # traceback; the client learns nothing about the internals.
    return problem(500, "internal", "an unexpected error occurred")


exception_handlers: dict[Any, ExceptionHandler] = {
    LiveshopError: _liveshop_error,
    ValidationError: _validation_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
