"""uvicorn's httptools protocol with bounds on reading a request: its head (request line and
headers) and what follows it in size, the whole request in time; and problem+json answers for
the requests it refuses before the app sees them.

httptools keeps a header until it is complete, with no limit of its own: four requests with
one 32 MB header each were taken whole, and left the server some 80 MB larger, no token needed.
A head past MAX_HEAD_BYTES is answered 431 and its connection closed, as nginx (four 8 KB
buffers) or Node (16 KB) would, however its bytes were split into reads. Websocket handshakes
are requests too, bound alike.

What follows a head is bound too: past MAX_AFTER_HEAD_BYTES, body, chunk framing and trailers
together, a request is answered 413. The app bounds the body it reads, but not a chunked
request's trailers, which httptools keeps as it does headers, nor its chunk extensions.

uvicorn does not time a request while it arrives: a client that sends a head (or a body) a byte
at a time, or nothing at all after connecting, kept its connection and buffers for as long as
it liked (2,000 such connections held 69 MB). A connection's first request must arrive whole
within READ_SECONDS of connecting, and each later one within READ_SECONDS of its first byte;
if not, it is answered 408 and its connection closed, as nginx's client_header_timeout and
client_body_timeout or Node's requestTimeout would. Between requests uvicorn's own keep-alive
timeout applies.

A request httptools cannot parse (a space in the path, a bad Content-Length or chunk) is
answered 400 `malformed_request`, where uvicorn would answer in plain text.

A refusal is an answer like any other, in its request's turn: HTTP/1.1 answers pipelined
requests in order. Bad bytes after requests received whole (in the same packet as a claim, say)
are answered once those requests are, so that the claim's 201 is not lost behind a 400 the
client would take for the claim's own and buy again. Bad bytes, or time run out, in a request's
own body refuse that request: its app, if it started, reads a disconnect and what it answers is
dropped, as when a client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger("liveshop.server")

MAX_HEAD_BYTES = 32 * 1024
# A request's bytes after its head: its body (64 KB at most, as the app reads it) with any
# chunk framing (a client that sends a byte a chunk takes six bytes a byte), and its trailers.
MAX_AFTER_HEAD_BYTES = 1024 * 1024
# Time for a whole request to arrive, head and body (at most 64 KB here): generous for a phone
# on a poor network, short for a client that holds a connection open by sending nothing.
READ_SECONDS = 30.0
# How long a refused client may go on sending (dropped) before its connection is closed.
LINGER_SECONDS = 2.0
# Requests received whole and waiting behind the one being answered. uvicorn queues every
# pipelined request a read holds (about 7,500 in 256 KB), and reads on after each answer: one
# client that sent requests back to back, answered or not, grew the server by 750 MB in 3 s.
# Browsers never pipeline; a client that does waits for its answers past this many.
MAX_PIPELINED = 32


def problem_body(status: int, title: str, detail: str, code: str) -> bytes:
    """A problem+json body, as server/http/errors.py would word it."""
    problem = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return json.dumps({**problem, "code": code}, separators=(",", ":")).encode()


def problem_response(status: int, title: str, detail: str, code: str) -> bytes:
    """A whole response that closes its connection, with a problem+json body."""
    body = problem_body(status, title, detail, code)
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, title.encode()),
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


TOO_LARGE = problem_response(
    431,
    "Request Header Fields Too Large",
    f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes",
    "headers_too_large",
)
MALFORMED = problem_response(
    400, "Bad Request", "the request is not well-formed HTTP/1.1", "malformed_request"
)
_TOO_LARGE_AFTER_HEAD = problem_response(
    413,
    "Request Entity Too Large",
    f"the body, with its chunk framing and trailers, is larger than {MAX_AFTER_HEAD_BYTES} bytes",
    "payload_too_large",
)
_TOO_MANY_PIPELINED = problem_response(
    429,
    "Too Many Requests",
    f"more than {MAX_PIPELINED} requests sent ahead of their answers on one connection",
    "too_many_pipelined_requests",
)
_TIMED_OUT = problem_response(
    408,
    "Request Timeout",
    f"the request did not arrive whole within {READ_SECONDS:g} seconds",
    "request_timeout",
)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops at once, and uvicorn calls
    `send_400_response`, which answers 431 instead."""


class _TooManyPipelined(Exception):
    """Raised from a parser callback, as _HeadTooLarge is: answered 429 in its turn."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    # A head's size is known two ways: the bytes read while it is still incomplete (for the
    # header httptools keeps to itself until its end), and, once complete, its URL and headers
    # as parsed. The second is summed only after a read that could take the head past the
    # bound, as one read of up to 64 KB can: not for every request.
    _head_bytes = 0
    _in_head = True
    _after_head_bytes = 0  # of the request still arriving: see `_count_after_head`
    # Whether a request ended within the current read; then the next head's bytes in it are
    # the read less what the requests before it took of it: their bodies (as decoded: chunk
    # framing is charged to the head) and their heads (url, headers, bytes counted before).
    _ended_in_read = False
    _body_in_read = 0
    _heads_in_read: list[tuple[bytes, list[tuple[bytes, bytes]], int]]
    _large_read = False
    _head_too_large = False
    _too_many_pipelined = False
    _refused = False
    # A refusal that waits for the requests before it to be answered (see `_refuse`).
    _deferred: bytes | None = None
    # One timer a connection, not one a request (arming and cancelling one cost a no-op
    # request 8 % more): when it fires, a request still arriving since READ_SECONDS ago is
    # refused, and otherwise the timer is set again for when the one arriving would be due.
    _reading_since: float | None = None  # loop time; None between requests
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading_since = self.loop.time()
        self._read_timer = self.loop.call_later(READ_SECONDS, self._check_the_read)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timing()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what the client still sends after the answer is dropped, not parsed
        self._large_read = self._head_bytes + len(data) > MAX_HEAD_BYTES
        self._ended_in_read, self._body_in_read, self._heads_in_read = False, 0, []
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if not self._in_head:
            self._count_after_head(len(data))
            return
        if self._ended_in_read:  # a head begun behind pipelined requests in this read
            taken = sum(
                max(_head_size(url, headers) - counted, 0)
                for url, headers, counted in self._heads_in_read
            )
            self._head_bytes = len(data) - self._body_in_read - taken
        else:
            self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_large_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse (or whose head a callback found
        too large), in the API's own form."""
        if self._head_too_large:
            self._refuse_large_head()
        elif self._too_many_pipelined:
            log.info("too_many_pipelined_requests")
            self._refuse(_TOO_MANY_PIPELINED)
        else:
            self._refuse(MALFORMED)

    def handle_websocket_upgrade(self) -> None:
        self._stop_timing()  # the websocket protocol takes the connection over, with its pings
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            # Those queued are answered, then this refusal, and the connection closes: no
            # more of the read is parsed.
            self._too_many_pipelined = True
            raise _TooManyPipelined
        self._in_head, self._head_bytes = True, 0
        if self._reading_since is None:  # a connection's first request counts from its start
            self._reading_since = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head, self._after_head_bytes = False, 0
        self._heads_in_read.append((self.url, self.headers, self._head_bytes))
        # Checked before uvicorn parses the URL, which httptools cannot past 64 KB.
        if self._large_read and self._parsed_head_size() > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_since, self._ended_in_read = None, True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        last = not self.pipeline  # else super starts the next pipelined request
        super().on_response_complete()
        if self._deferred is not None and last and not self.transport.is_closing():
            self._unset_keepalive_if_required()  # armed by super; the refusal closes instead
            answer, self._deferred = self._deferred, None
            answer_and_close(self.transport, self.loop, answer)

    def _arriving_cycle(self) -> RequestResponseCycle | None:
        """The cycle of the request still arriving (head read, body not yet whole), if any:
        `self.cycle` is the last request's, which may be whole and answered already."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope or self._reading_since is None:
            return None
        return cycle

    def _parsed_head_size(self) -> int:
        return _head_size(self.url, self.headers)

    def _count_after_head(self, size: int) -> None:
        """Bound what follows a head. httptools keeps each trailer field until its line ends,
        as it does a header, copying it again at each read, and a chunk extension is read
        and dropped: neither is body, which the app bounds, so either went on for as long as
        the client sent it (500 MB of one trailer held the event loop up to 7 s, and the
        server 225 MB larger). A read may hold the head's end too: counted, it is a read's
        worth at most, far below the bound."""
        if self._reading_since is None:
            return  # the read ended the request: the rest of it is the next one's head
        self._after_head_bytes += size
        if self._after_head_bytes > MAX_AFTER_HEAD_BYTES:
            log.info("request_too_large", extra={"bytes": self._after_head_bytes})
            self._refuse(_TOO_LARGE_AFTER_HEAD)

    def _refuse_large_head(self) -> None:
        size = max(self._head_bytes, self._parsed_head_size())
        log.info("request_head_too_large", extra={"bytes": size})
        self._refuse(TOO_LARGE)

    def _check_the_read(self) -> None:
        since = self._reading_since
        due = READ_SECONDS if since is None else since + READ_SECONDS - self.loop.time()
        if due > 0:
            self._read_timer = self.loop.call_later(due, self._check_the_read)
            return
        self._read_timer = None
        if self.transport.is_closing():
            return  # closed meanwhile (uvicorn's keep-alive timeout): connection_lost is due
        log.info("request_read_timed_out")
        self._refuse(_TIMED_OUT)

    def _stop_timing(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _refuse(self, answer: bytes) -> None:
        self._refused = True
        self._stop_timing()
        arriving = self._arriving_cycle()
        queued = False
        if arriving is not None:
            # The refusal is this request's own: its app reads a disconnect (not a wait for a
            # body that will not come) and what it sends is dropped, not written after ours;
            # nor is a "100 Continue" its first read would write.
            arriving.disconnected, arriving.waiting_for_100_continue = True, False
            arriving.message_event.set()
            if arriving.response_started:
                # The app answered before the body was whole: a second answer would be read as
                # the next request's. Only the connection goes.
                self.transport.close()
                return
            queued = bool(self.pipeline) and self.pipeline[0][0] is arriving
            if queued:
                self.pipeline.popleft()  # never started; an earlier request still runs
        running = self.cycle if arriving is None else None
        if queued or self.pipeline or (running is not None and not running.response_complete):
            # Requests received whole before the refused bytes are answered first, in order;
            # the last one's on_response_complete sends the refusal. Nothing more is read.
            self._deferred = answer
            self.flow.pause_reading()
        else:
            answer_and_close(self.transport, self.loop, answer)


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A head's bytes, as parsed: its URL and each header with ": " and its line end; at least
    the request line's method, spaces, version and the blank line besides (17 bytes)."""
    return 17 + len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def answer_and_close(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, answer: bytes
) -> None:
    """Send a whole answer and close the connection, the answer kept from a reset."""
    transport.write(answer)
    # Closed at once, a socket with unread data sends a reset, which can destroy the answer
    # before the client reads it: end our side, drop what still comes, close a bit later.
    if transport.can_write_eof():
        transport.write_eof()
    loop.call_later(LINGER_SECONDS, transport.close)
