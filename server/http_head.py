"""uvicorn's httptools protocol with a bound on a request's head (its request line and headers),
and problem+json answers for the requests it refuses before the app sees them.

httptools keeps a header until it is complete, with no limit of its own: four requests with
one 32 MB header each were taken whole, and left the server some 80 MB larger, no token needed.
A head still incomplete past MAX_HEAD_BYTES is answered 431 and its connection closed, as nginx
(four 8 KB buffers) or Node (16 KB) would. Websocket handshakes are requests too, bound alike.
A request httptools cannot parse (a space in the path, a bad Content-Length or chunk) is
answered 400 `malformed_request`, where uvicorn would answer in plain text.
"""

from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("liveshop.server")

MAX_HEAD_BYTES = 32 * 1024
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


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    # Counted after each read is parsed, while the head is still incomplete: a read that also
    # carries the end of the previous request (pipelining) counts whole, a read's worth at most.
    _head_bytes = 0
    _in_head = True
    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what the client still sends after the answer is dropped, not parsed
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            log.info("request_head_too_large", extra={"bytes": self._head_bytes})
            self._refuse(_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse, in the API's own form."""
        self._refuse(_MALFORMED)

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self.transport.write(answer)
        # Closed at once, a socket with unread data sends a reset, which can destroy the answer
        # before the client reads it: end our side, drop what still comes, close a bit later.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
