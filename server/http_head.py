"""uvicorn's httptools protocol with a bound on a request's head (its request line and headers).

httptools keeps a header until it is complete, with no limit of its own: four requests with
one 32 MB header each were taken whole, and left the server some 80 MB larger, no token needed.
A head still incomplete past MAX_HEAD_BYTES is answered 431 and its connection closed, as nginx
(four 8 KB buffers) or Node (16 KB) would. Websocket handshakes are requests too, bound alike.
"""

from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("liveshop.server")

MAX_HEAD_BYTES = 32 * 1024
# How long a refused client may go on sending (dropped) before its connection is closed.
LINGER_SECONDS = 2.0

_DETAIL = f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes"
_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": _DETAIL,
        "code": "headers_too_large",
    }
).encode()
_TOO_LARGE = b"".join(
    [
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        b"content-type: application/problem+json\r\n",
        b"content-length: %d\r\n" % len(_BODY),
        b"connection: close\r\n\r\n",
        _BODY,
    ]
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
            self._refuse()

    def _refuse(self) -> None:
        log.info("request_head_too_large", extra={"bytes": self._head_bytes})
        self._refused = True
        self.transport.write(_TOO_LARGE)
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
