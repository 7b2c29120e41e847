"""JSON as RFC 8259 defines it. Python's `json` and pydantic's parser both also take `NaN`,
`Infinity` and `-Infinity`, and read `1e400` as infinity: a client that sends them sent no JSON
number we can hold, so it hears `malformed_json` (400 over HTTP, an `error` frame over a
websocket) like any other unreadable body, not a complaint about the field it landed in."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number too large for a double")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)


def loads(text: str) -> Any:
    """`text` parsed; ValueError when it is not JSON or holds a number nobody can hold, and
    RecursionError when it nests deeper than the parser goes."""
    return _DECODER.decode(text)


def is_strict_json(body: bytes) -> bool:
    """Whether `body` is UTF-8 JSON by RFC 8259 with numbers a double holds."""
    try:
        loads(body.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return True
