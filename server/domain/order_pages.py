"""Pages of an order list, newest first, and the cursor that continues one. Pure, no I/O.

A list is sorted by (created_at, id), both descending, and a page continues after the key of
the last order it showed (keyset paging): orders placed meanwhile sort before that key, so
they neither shift the next page nor show up twice.

The cursor is that key behind a checksum, base64url: opaque to clients, and a cursor edited or
cut short is refused as `invalid_cursor` rather than read as another position. The checksum is
not a secret: a forged cursor would only position a list within what its caller may see anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from server.domain.errors import InvalidInput
from server.domain.offers import epoch_ms, from_epoch_ms
from server.domain.orders import Order

# Generous for the milliseconds and an order id, short enough that decoding costs nothing.
MAX_CURSOR_CHARS = 200
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_CHECKSUM_BYTES = 8
# Epoch milliseconds, a dot, the order's id (printable ASCII: ids are generated ASCII).
_KEY = re.compile(r"(0|[1-9][0-9]{0,14})\.([\x21-\x7e]{1,100})")


@dataclass(frozen=True, slots=True)
class OrderKey:
    """Where an order sorts in a list: stores page with it (created_at is to the millisecond,
    as every order's is)."""

    created_at: datetime
    order_id: str

    @classmethod
    def of(cls, order: Order) -> OrderKey:
        return cls(order.created_at, order.id)


@dataclass(frozen=True, slots=True)
class OrderPage:
    items: list[Order]
    next_cursor: str | None  # None: this page is the list's last


def comes_after(order: Order, key: OrderKey) -> bool:
    """Whether the order sorts after the key in a newest-first list (it is older, or as old
    with a smaller id): what the next page holds."""
    return (order.created_at, order.id) < (key.created_at, key.order_id)


def page_of(found: Sequence[Order], limit: int) -> OrderPage:
    """The page from up to `limit + 1` orders read newest first: the one beyond `limit` only
    shows that there is a next page."""
    items = list(found[:limit])
    if len(found) <= limit or not items:
        return OrderPage(items, None)
    return OrderPage(items, encode_cursor(OrderKey.of(items[-1])))


def encode_cursor(key: OrderKey) -> str:
    text = f"{epoch_ms(key.created_at)}.{key.order_id}".encode("ascii")
    raw = _checksum(text) + text
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> OrderKey:
    """The key a cursor holds, or InvalidInput `invalid_cursor`."""
    if len(cursor) > MAX_CURSOR_CHARS or not _BASE64URL.fullmatch(cursor):
        raise _invalid()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error:
        raise _invalid() from None
    checksum, text = raw[:_CHECKSUM_BYTES], raw[_CHECKSUM_BYTES:]
    if not hmac.compare_digest(checksum, _checksum(text)):
        raise _invalid()
    match = _KEY.fullmatch(text.decode("ascii", errors="replace"))
    if match is None:
        raise _invalid()
    try:
        key = OrderKey(from_epoch_ms(int(match[1])), match[2])
    except OverflowError:  # past the year 9999
        raise _invalid() from None
    # Only the one spelling this module writes: a cursor edited into another (extra bits in the
    # last character) is not one of ours.
    if encode_cursor(key) != cursor:
        raise _invalid()
    return key


def _checksum(text: bytes) -> bytes:
    return hashlib.blake2b(text, digest_size=_CHECKSUM_BYTES, person=b"order-cursor").digest()


def _invalid() -> InvalidInput:
    return InvalidInput(
        "the cursor is not one this list gave: start again without it", code="invalid_cursor"
    )
