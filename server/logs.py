"""Structured logs: one JSON object per line. Never log tokens, chat text or personal data."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from server.domain.errors import LiveshopError

# Attributes every LogRecord has; anything else came in through `extra=` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


# Access tokens travel in websocket query strings, which a log line may quote (a client's
# request line, say), as the client spelled them: the server decodes `%74oken=` as `token=`, so
# the log must match it too. The whole value goes, up to the next parameter: a token wrapped in
# quotes or other characters is refused, but is as good as any once they are cut off.
_TOKEN_IN_QUERY = re.compile(
    r"((?:t|%74)(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)=)[^&\s]+", re.IGNORECASE
)


def redact(text: str) -> str:
    if "=" not in text:  # most of what is logged: no query, no regular expression's time
        return text
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "color_message":  # uvicorn's ANSI duplicate
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


# What uvicorn logs as an error (with a traceback) or a warning, though it is a client's fault
# it has already answered (1007 for a text frame that is not UTF-8, 400 for a request it cannot
# parse): anyone could fill the log with it.
_CLIENT_FAULTS = frozenset(
    {"Invalid UTF-8 sequence received from client.", "Invalid HTTP request received."}
)


# uvicorn's line for each websocket handshake: the client's address and the room it watches,
# which together tell who watched which show. Liveshop logs each viewer's join without either.
_WEBSOCKET_ACCESS = '%s - "WebSocket %s"'


def _uvicorn_as_liveshop_wants(record: logging.LogRecord) -> bool:
    """Client faults as information, and no websocket handshake lines."""
    if isinstance(record.msg, str) and record.msg.startswith(_WEBSOCKET_ACCESS):
        return False
    if record.msg in _CLIENT_FAULTS:
        record.levelno, record.levelname, record.exc_info = logging.INFO, "INFO", None
        return logging.getLogger().isEnabledFor(logging.INFO)
    return True


# Libraries whose debug logs carry what passes through them: PyMongo whole documents (a buyer's
# name, phone and address), websockets every frame (chat, claims), httpcore each request. Never
# below INFO, whatever LIVESHOP_LOG_LEVEL says.
PAYLOAD_LOGGERS = ("pymongo", "websockets", "httpcore")


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
    # uvicorn's access log would print every client's address and query string, tokens
    # included (its websocket handshakes, logged elsewhere, are dropped by the filter below).
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").addFilter(_uvicorn_as_liveshop_wants)


def warn_if_failed(logger: logging.Logger, event: str) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback for background work nobody awaits: it logs an unexpected failure, with
    its traceback (a LiveshopError is an answer, not a failure: a backend away is one), and
    retrieves it, so asyncio does not warn that it was never retrieved."""

    def check(task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        if not isinstance(error, LiveshopError):
            logger.error(event, exc_info=error, extra={"error": type(error).__name__})

    return check
