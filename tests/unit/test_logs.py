"""What the logs may not carry: tokens, and who watched which room from where."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from server.logs import configure_logging, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsZW8ifQ.c2lnbmF0dXJl"  # test-only, signed by nobody


@pytest.mark.parametrize(
    "query",
    [
        f"token={TOKEN}",
        f'token="{TOKEN}"',
        f"token='{TOKEN}'",
        f"%74oken=({TOKEN})",
        f"since=3&TOKEN={TOKEN}&epoch=ab",
    ],
)
def test_a_token_in_a_query_is_redacted_whatever_wraps_it(query: str) -> None:
    line = redact(f'"WebSocket /ws/rooms/r_1?{query}" [accepted]')
    assert TOKEN not in line
    assert "eyJ" not in line
    assert "[redacted]" in line


@pytest.fixture
def liveshop_log() -> Iterator[io.StringIO]:
    """What Liveshop's logging writes, then the test run's logging again."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info")
    written = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written)
    yield written
    root.handlers[:] = handlers
    root.setLevel(level)


def test_websocket_handshakes_are_not_logged_with_the_viewers_address(
    liveshop_log: io.StringIO,
) -> None:
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.info('%s - "WebSocket %s" [accepted]', "203.0.113.7:51234", "/ws/rooms/r_1?token=x")
    uvicorn.info('%s - "WebSocket %s" 403', "203.0.113.7:51234", "/ws/rooms/r_1")
    uvicorn.info("Started server process [%d]", 42)
    lines = [json.loads(line) for line in liveshop_log.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["Started server process [42]"]
