"""Text frames written straight to a uvicorn websocket's transport, when that is safe.

A room event goes to every viewer at once: `offer.stock` and `offer.ended` reach thousands of
sockets in one pass of the event loop. Through ASGI each copy costs a writer task, a coroutine
through starlette and uvicorn's `send`, and a websockets `Frame` object, about 12 µs a viewer.
Yet a server's unmasked text frame is the same bytes for every viewer. So when the socket is
uvicorn's websockets-sansio protocol, open, not paused by flow control and without
per-message deflate (whose frames depend on each socket's compression state), the frame is
encoded once and handed to each transport; otherwise the frame goes the ASGI way.

uvicorn's protocol has no public API for this: the attributes used here are checked at every
write, and `tests/integration/channels/test_direct_send.py` fails if the uvicorn we ship stops
offering them, rather than letting the server fall back to the slow path unnoticed.
"""

from __future__ import annotations

from starlette.types import Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

DirectSocket = WebSocketsSansIOProtocol

_TEXT_FIN = 0x81  # RFC 6455 §5.2: FIN set, opcode 1 (text); a server's frames carry no mask

# The last frame encoded: a room event is pushed to every viewer as the same str object, so it
# is encoded once per event, not once per viewer.
_last_text: str | None = None
_last_frame = b""


def direct_socket(send: Send) -> DirectSocket | None:
    """uvicorn's protocol behind an ASGI `send`, or None when it is another server or protocol."""
    owner = getattr(send, "__self__", None)
    return owner if isinstance(owner, WebSocketsSansIOProtocol) else None


def send_now(socket: DirectSocket, text: str) -> bool:
    """Write `text` as one frame now, or return False if only the ASGI path may send it (the
    handshake is not done, the socket is closing or paused, or frames are compressed)."""
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
