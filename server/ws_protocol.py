"""uvicorn's websockets-sansio protocol with the bounds it lacks against a hostile client.

- **A handshake websockets cannot parse** (a request line or a header over 8 KB, more than 128
  headers, a body) was never answered: websockets queued its refusal and uvicorn neither wrote
  it nor closed, so each such connection stayed open with its buffers (1,000 held 175 MB). It
  is now answered as the HTTP requests of `server/http_head.py` are, 431 or 400, and closed.
- **A handshake websockets parses but refuses** (no or a bad `Sec-WebSocket-Key`, a version
  other than 13, a method other than GET) was answered in websockets' plain text; it is now
  answered problem+json, as every other refusal is, with the same status and headers.
- **Pings** are answered by the protocol itself, below the app and its frame limits. A client
  that sent pings and read nothing had every pong buffered (1 GB in 40 s), and one that read
  them took the event loop from every viewer. A pong is now dropped while the transport is
  paused (the peer is not reading: it hears none rather than the server holding them), and a
  client that pings more than PINGS_PER_SECOND on average (PING_BURST at once) is closed with
  1008, as a viewer who floods frames is with 4029. Browsers never send pings; native clients
  send one every few seconds.
- **A handshake the app refuses with an HTTP answer** (404 for a path with no socket) was
  logged as an ERROR by uvicorn, which took it for a handshake never completed.
"""

from __future__ import annotations

import email.utils
import logging
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Response

from server.domain.chat import TokenBucket
from server.domain.text import shown
from server.http_head import MALFORMED, answer_and_close, problem_body, problem_response

log = logging.getLogger("liveshop.ws")
# uvicorn hands websockets its own `uvicorn.error` logger, under which websockets logs every
# frame and handshake header at debug (chat text, addresses, a token sent in a header).
# websockets' own logger never goes below INFO (logs.PAYLOAD_LOGGERS): the connection logs there.
_FRAMES_LOG = logging.getLogger("websockets.server")

PINGS_PER_SECOND = 2.0
PING_BURST = 20.0
POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1

# websockets' own bounds on a handshake's head, below MAX_HEAD_BYTES of HTTP's.
HANDSHAKE_TOO_LARGE = problem_response(
    431,
    "Request Header Fields Too Large",
    f"a request line or header is longer than {MAX_LINE_LENGTH} bytes, or there are more than"
    f" {MAX_NUM_HEADERS} headers",
    "headers_too_large",
)
# websockets' refusals of a handshake it could parse, by status.
_REFUSAL_CODES = {
    HTTPStatus.BAD_REQUEST: "invalid_handshake",
    HTTPStatus.FORBIDDEN: "forbidden",
    HTTPStatus.METHOD_NOT_ALLOWED: "method_not_allowed",
    HTTPStatus.UPGRADE_REQUIRED: "upgrade_required",
    HTTPStatus.INTERNAL_SERVER_ERROR: "internal",
}
_REFUSAL_PREFIX = "Failed to open a WebSocket connection: "


def problem_rejection(status: int, text: str) -> Response:
    """websockets' `ServerProtocol.reject`, answering problem+json instead of plain text: the
    first line of its text, without its preamble, is the detail."""
    refused = HTTPStatus(status)
    # Its text may quote a header the client sent, whole.
    detail = shown(text.split("\n", 1)[0].removeprefix(_REFUSAL_PREFIX).rstrip("."))
    code = _REFUSAL_CODES.get(refused, "websocket_refused")
    body = problem_body(refused.value, refused.phrase, detail or refused.phrase.lower(), code)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "application/problem+json"),
        ]
    )
    return Response(refused.value, refused.phrase, headers, body)


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    _pings: TokenBucket | None = None  # made at the first ping: browsers never send one
    _refused = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.reject = problem_rejection  # type: ignore[method-assign]
        self.conn.logger = _FRAMES_LOG
        self.conn.debug = _FRAMES_LOG.isEnabledFor(logging.DEBUG)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.handshake_initiated or self._refused:
            return  # the usual case, every frame: one attribute read
        failed = self.conn.handshake_exc
        if failed is not None:
            self._refused = True  # what the client still sends goes to websockets' discard
            self.conn.data_to_send()  # websockets' own refusal, in plain text: ours instead
            too_large = (RequestLineTooLong, HeaderLineTooLong, TooManyHeaders)
            log.info("ws_handshake_refused", extra={"reason": type(failed).__name__})
            answer_and_close(
                self.transport,
                self.loop,
                HANDSHAKE_TOO_LARGE if isinstance(failed, too_large) else MALFORMED,
            )

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # uvicorn's protocol answers a refused handshake but leaves it "incomplete", then
            # logs an ERROR for it ("returned without completing handshake"), which anyone
            # could fill the log with (a socket to an unknown path is answered 404 so).
            self.handshake_complete = True

    def handle_ping(self) -> None:
        pong = b"".join(self.conn.data_to_send())  # queued by websockets on reading the ping
        if self._pings is None:
            self._pings = TokenBucket(capacity=PING_BURST, rate=PINGS_PER_SECOND)
        if not self._pings.take(self.loop.time()):
            self._close_for_pings()
        elif self.writable.is_set():
            self.transport.write(pong)

    def _close_for_pings(self) -> None:
        if self.close_sent:
            return
        log.info("ws_closed_for_pings")
        self.conn.send_close(POLICY_VIOLATION, "too many pings")
        # uvicorn's own way out of a close the protocol decided: tell the app, send, close.
        self.handle_parser_exception()
