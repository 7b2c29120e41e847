"""A backend that cannot answer is `Unavailable` to the caller, never a crash.

Redis or MongoDB down, restarting, failing over, or frozen past its timeout: the HTTP API
answers 503 with Retry-After and a websocket an `unavailable` error frame, and a claim sent
again with the same key finds its units. Any other error from a client library is a bug in
Liveshop and stays one (a 500, logged with its traceback).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from server.domain.errors import Unavailable, Unresponsive

P = ParamSpec("P")
T = TypeVar("T")
Method = Callable[P, Coroutine[Any, Any, T]]

log = logging.getLogger("liveshop.backends")

# An outage fails every call: one line per method this often says so without flooding the log.
LOG_EVERY_SECONDS = 10.0
_last_logged: dict[str, float] = {}  # by method: a bounded set of names


def unavailable_when(
    unreachable: Callable[[Exception], bool],
    message: str,
    *,
    timed_out: Callable[[Exception], bool],
) -> Callable[[Method[P, T]], Method[P, T]]:
    """Decorates an adapter's coroutine method: errors for which `unreachable` holds become
    `Unavailable(message)`, caused by the original (which the logs keep); `Unresponsive` when
    the backend ran out the deadline (`timed_out`)."""

    def decorate(method: Method[P, T]) -> Method[P, T]:
        @functools.wraps(method)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await method(*args, **kwargs)
            except Exception as exc:
                if unreachable(exc):
                    _note(method.__qualname__, exc)
                    raise (Unresponsive if timed_out(exc) else Unavailable)(message) from exc
                raise

        return wrapper

    return decorate


def _note(call: str, error: Exception) -> None:
    now = time.monotonic()
    if now - _last_logged.get(call, -math.inf) >= LOG_EVERY_SECONDS:
        _last_logged[call] = now
        log.warning("backend_unreachable", extra={"call": call, "error": type(error).__name__})
