"""Text frames written straight to a uvicorn websocket's transport, when that is safe.

A room event goes to every viewer at once: `offer.stock` and `offer.ended` reach thousands of
sockets in one pass of the event loop. Through ASGI each copy costs a writer task, a coroutine
through starlette and uvicorn's `send`, and a websockets `Frame` object. Yet a server's
unmasked text frame is the same bytes for every viewer. So when the socket is uvicorn's
websockets-sansio protocol, open and not paused by flow control, the frame is encoded once and
handed to each transport; otherwise it goes the ASGI way. Sockets that negotiated per-message
deflate go the ASGI way too: an uncompressed frame would be legal there, but whoever turned
deflate on wants the bandwidth saved.

uvicorn's protocol has no public API for this. `direct_socket` accepts a protocol only if it
has everything `send_now` reads, and `send_now` falls back rather than raise, so another
uvicorn (or a middleware wrapping `send`, as `--log-level trace` does) only means the slower
path. `tests/integration/channels/test_direct_send.py` fails if the uvicorn we ship stops
offering it, so that cannot happen unnoticed.
"""

from __future__ import annotations

import logging

from starlette.types import Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

DirectSocket = WebSocketsSansIOProtocol

log = logging.getLogger("liveshop.ws")

_TEXT_FIN = 0x81  # RFC 6455 §5.2: FIN set, opcode 1 (text); a server's frames carry no mask

# The last frame encoded: a room event is pushed to every viewer as the same str object, so it
# is encoded once per event, not once per viewer.
_last_text: str | None = None
_last_frame = b""


# What send_now reads of uvicorn's protocol (set in its __init__ and connection_made).
_NEEDED = (
    "close_sent",
    "disconnected",
    "initial_response",
    "handshake_complete",
    "writable",
    "conn",
    "transport",
)


_warned = False


def direct_socket(send: Send) -> DirectSocket | None:
    """uvicorn's protocol behind an ASGI `send`, or None when it is another server or protocol
    (said once per process in the log: the room still works, at a higher cost per viewer)."""
    global _warned
    owner = getattr(send, "__self__", None)
    if isinstance(owner, WebSocketsSansIOProtocol) and all(hasattr(owner, n) for n in _NEEDED):
        return owner
    if not _warned:
        _warned = True
        log.warning("ws_direct_send_unavailable", extra={"send": type(owner).__name__})
    return None


def send_now(socket: DirectSocket, text: str) -> bool:
    """Write `text` as one frame now, or return False if only the ASGI path may send it (the
    handshake is not done, the socket is closing or paused, or frames are compressed)."""
    try:
        return _write_if_open(socket, text)
    except Exception:  # whatever went wrong, the ASGI path can still send it, or say why not
        return False


def _write_if_open(socket: DirectSocket, text: str) -> bool:
    if (
        socket.close_sent
        or socket.disconnected
        or socket.initial_response is not None
        or not socket.handshake_complete
        or not socket.writable.is_set()
        or socket.conn.state is not State.OPEN
        or socket.conn.extensions
        or socket.transport.is_closing()
    ):
        return False
    socket.transport.write(text_frame(text))
    return True


def text_frame(text: str) -> bytes:
    global _last_text, _last_frame
    if text is _last_text:
        return _last_frame
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((_TEXT_FIN, size))
    elif size < 1 << 16:
        header = bytes((_TEXT_FIN, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((_TEXT_FIN, 127)) + size.to_bytes(8, "big")
    _last_text, _last_frame = text, header + payload
    return _last_frame
