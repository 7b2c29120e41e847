"""uvicorn's httptools protocol with bounds on reading a request: its head (request line and
headers) in size, the whole request in time; and problem+json answers for the requests it
refuses before the app sees them.

httptools keeps a header until it is complete, with no limit of its own: four requests with
one 32 MB header each were taken whole, and left the server some 80 MB larger, no token needed.
A head past MAX_HEAD_BYTES is answered 431 and its connection closed, as nginx (four 8 KB
buffers) or Node (16 KB) would, however its bytes were split into reads. Websocket handshakes
are requests too, bound alike.

uvicorn does not time a request while it arrives: a client that sends a head (or a body) a byte
at a time, or nothing at all after connecting, kept its connection and buffers for as long as
it liked (2,000 such connections held 69 MB). A connection's first request must arrive whole
within READ_SECONDS of connecting, and each later one within READ_SECONDS of its first byte;
if not, it is answered 408 and its connection closed, as nginx's client_header_timeout and
client_body_timeout or Node's requestTimeout would. Between requests uvicorn's own keep-alive
timeout applies.

A request httptools cannot parse (a space in the path, a bad Content-Length or chunk) is
answered 400 `malformed_request`, where uvicorn would answer in plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("liveshop.server")

MAX_HEAD_BYTES = 32 * 1024
# Time for a whole request to arrive, head and body (at most 64 KB here): generous for a phone
# on a poor network, short for a client that holds a connection open by sending nothing.
READ_SECONDS = 30.0
# How long a refused client may go on sending (dropped) before its connection is closed.
LINGER_SECONDS = 2.0


def _problem(status: int, title: str, detail: str, code: str) -> bytes:
    """A whole response that closes its connection, as server/http/errors.py would word it."""
    problem = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body = json.dumps({**problem, "code": code}, separators=(",", ":")).encode()
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, title.encode()),
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_TOO_LARGE = _problem(
    431,
    "Request Header Fields Too Large",
    f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes",
    "headers_too_large",
)
_MALFORMED = _problem(
    400, "Bad Request", "the request is not well-formed HTTP/1.1", "malformed_request"
)
_TIMED_OUT = _problem(
    408,
    "Request Timeout",
    f"the request did not arrive whole within {READ_SECONDS:g} seconds",
    "request_timeout",
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops at once, and uvicorn calls
    `send_400_response`, which answers 431 instead."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    # Two counts of a head's bytes: what httptools handed over (the URL as it comes, then the
    # headers once complete), exact, so that a head arriving in one read is bound as one that
    # trickles; and the bytes read while the head is still incomplete, for the header httptools
    # keeps to itself until its end.
    _parsed_head = 0
    _head_bytes = 0
    _in_head = True
    _head_too_large = False
    _refused = False
    _read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time_the_read()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timing()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what the client still sends after the answer is dropped, not parsed
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_large_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse (or whose head a callback found
        too large), in the API's own form."""
        if self._head_too_large:
            self._refuse_large_head()
        else:
            self._refuse(_MALFORMED)

    def handle_websocket_upgrade(self) -> None:
        self._stop_timing()  # the websocket protocol takes the connection over, with its pings
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes, self._parsed_head = True, 0, 0
        self._time_the_read()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))  # before httptools' own URL parser gives up, past 64 KB
        super().on_url(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._count_head(sum(len(name) + len(value) + 4 for name, value in self.headers))
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_timing()
        super().on_message_complete()

    def _count_head(self, size: int) -> None:
        self._parsed_head += size
        if self._parsed_head > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise _HeadTooLarge

    def _refuse_large_head(self) -> None:
        log.info(
            "request_head_too_large", extra={"bytes": max(self._head_bytes, self._parsed_head)}
        )
        self._refuse(_TOO_LARGE)

    def _time_the_read(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(READ_SECONDS, self._read_timed_out)

    def _stop_timing(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self._refused or self.transport.is_closing():
            return
        log.info("request_read_timed_out")
        if self.cycle is not None and self.cycle.response_started:
            # The app answered before the body was whole: a second answer would be read as the
            # next request's. Only the connection goes.
            self._refused = True
            self.transport.close()
        else:
            self._refuse(_TIMED_OUT)

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self._stop_timing()
        self.transport.write(answer)
        # Closed at once, a socket with unread data sends a reset, which can destroy the answer
        # before the client reads it: end our side, drop what still comes, close a bit later.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
