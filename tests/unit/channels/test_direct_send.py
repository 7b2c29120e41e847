"""Frames written straight to the socket are the bytes websockets itself would write."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from channels.direct_send import text_frame


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
