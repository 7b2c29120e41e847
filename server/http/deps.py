"""What HTTP handlers need from a request: the container, the caller, a parsed body."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from schemas.http import NoFieldsIn, RequestModel, faults_of
from server.auth import verify_token
from server.container import Container
from server.domain.errors import LiveshopError, Unauthorized
from server.domain.identity import Identity
from server.http.errors import (
    ClientGone,
    InvalidRequest,
    MalformedJson,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from server.metrics import Metrics
from server.strict_json import is_strict_json

# JSON bodies here are small commands; a bigger one is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=RequestModel)


def container_of(request: Request) -> Container:
    return cast(Container, request.app.state.container)


def location(request: Request, path: str) -> str:
    """The absolute URL of `path` (from the server's root) for a `Location` header: under
    LIVESHOP_PUBLIC_URL when it is set, so that no request's `Host` names another site in it;
    else as the request reached the server (its `Host`, the scheme a believed proxy gave)."""
    public = container_of(request).settings.public_url
    return (public.rstrip("/") if public else str(request.base_url).rstrip("/")) + path


def location_of(request: Request, route: str, **params: str) -> str:
    """`location` of the named route."""
    return location(request, str(request.app.url_path_for(route, **params)))


def metrics_of(request: Request) -> Metrics:
    return cast(Metrics, request.app.state.metrics)


def identity_of(request: Request) -> Identity | None:
    """The caller proved by `Authorization: Bearer`, or None when there is no such header.

    A header that is present but wrong is an error rather than an anonymous caller, so a client
    with an expired token hears so instead of seeing a viewer's answer.
    """
    header = single_header(request, "authorization", _two_tokens)
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected `Authorization: Bearer <token>`", code="invalid_token")
    secret = container_of(request).settings.signing_secret()
    return verify_token(secret, token.strip())


def _two_tokens() -> Unauthorized:
    return Unauthorized("one `Authorization` header at most", code="invalid_token")


def single_header(request: Request, name: str, refuse: Callable[[], LiveshopError]) -> str | None:
    """The header's value, None without it; `refuse()` raised when it comes more than once:
    which one a proxy, a server or a retry would take is anybody's guess."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise refuse()
    return values[0] if values else None


def require_identity(request: Request) -> Identity:
    identity = identity_of(request)
    if identity is None:
        raise Unauthorized("this request needs an access token", code="missing_token")
    return identity


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed MAX_BODY_BYTES. Read it once:
    this reads the ASGI messages itself, so Starlette's `request.body()` would find none left."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    # Content-Length may be absent (chunked) or false, so count what actually arrives too.
    # The ASGI messages are read here rather than through request.stream(): that is an async
    # generator per request, which the event loop also tracks, and for the usual one-message
    # body it costs more than the reading.
    body = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client went away before its body arrived")
        if message["type"] != "http.request":
            continue
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def json_body(request: Request, model: type[R]) -> R:
    """The body parsed as JSON into `model`: 415 when its Content-Type names something else (a
    form, text: a client that sent what it did not mean; without one, JSON is assumed), 400
    when it is not JSON, 422 when it does not fit."""
    _check_json_type(request)
    return _parsed(await read_body(request), model)


async def no_body(request: Request) -> None:
    """For a request that takes none (an action on what its path names): nothing, or `{}`.
    Anything else is refused as a bad body is, not ignored: a client that sent fields meant
    them to be read."""
    body = await read_body(request)
    if body.strip():
        _check_json_type(request)
        _parsed(body, NoFieldsIn)


def _check_json_type(request: Request) -> None:
    content_type = single_header(request, "content-type", _not_json)
    if content_type is not None and not _is_json(content_type):
        raise _not_json()


def _parsed(body: bytes, model: type[R]) -> R:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        # Read once, without the inputs: a body of 5,000 unknown fields is 5,000 errors.
        found = faults_of(exc)
        # pydantic takes NaN and Infinity, and 1e400 as infinity; a body that holds them is
        # found out here, on the refusal's path, so that a good body is parsed only once.
        if found[0]["type"] == "json_invalid" or not is_strict_json(body):
            raise MalformedJson("the body is not valid JSON") from None
        raise InvalidRequest.from_faults(found, model.field_codes) from None


def _not_json() -> UnsupportedMediaType:
    return UnsupportedMediaType("the body must be JSON, with one `Content-Type: application/json`")


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()  # parameters (charset) aside
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def query_params(request: Request, model: type[M]) -> M:
    """The query's parameters as `model` reads them; one it knows given twice is refused (which
    one counts would be the parser's guess), as two of a header are."""
    params = request.query_params
    repeated = [name for name in model.model_fields if len(params.getlist(name)) > 1]
    if repeated:
        message = "is given more than once: send it once"
        raise InvalidRequest([{"field": repeated[0], "message": message, "type": "repeated"}])
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise InvalidRequest.from_faults(faults_of(exc)) from None
