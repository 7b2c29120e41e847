"""Frames written straight to the socket are the bytes websockets itself would write."""

from __future__ import annotations

from typing import cast

import pytest
from starlette.types import Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

from channels import direct_send
from channels.direct_send import direct_socket, send_now, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_a_text_frame_is_what_websockets_serializes(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # non-ASCII: the length counts bytes
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert text_frame(text) == expected


def test_a_frame_is_encoded_once_per_text_and_never_reused_for_another() -> None:
    event = '{"type":"offer.stock","remaining":3}'
    first = text_frame(event)
    assert text_frame(event) is first  # the same event pushed to the next viewer
    other = "".join(['{"type":"offer.stock",', '"remaining":2}'])
    assert text_frame(other) == Frame(Opcode.TEXT, other.encode()).serialize(mask=False)
    equal_copy = "".join([event[:10], event[10:]])  # equal text, another object
    assert text_frame(equal_copy) == first


class OtherServer:
    async def send(self, message: object) -> None: ...


def test_other_servers_and_unfamiliar_protocols_take_the_asgi_way(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(direct_send, "_warned", False)
    assert direct_socket(OtherServer().send) is None
    assert direct_socket(OtherServer().send) is None
    warnings = [r for r in caplog.records if r.getMessage() == "ws_direct_send_unavailable"]
    assert len(warnings) == 1  # once per process: operators hear of it, logs do not fill up
    # A uvicorn protocol lacking what send_now reads (another uvicorn version, say).
    bare = object.__new__(WebSocketsSansIOProtocol)
    assert direct_socket(cast(Send, bare.send)) is None
    # Should one still get this far, the frame falls back to the queue instead of raising
    # in the middle of a room's fan-out.
    assert send_now(bare, "frame") is False
