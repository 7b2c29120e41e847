"""Pages of a list, newest first, and the cursor that continues one (orders, rooms). Pure, no
I/O.

A list is sorted by (created_at, id), both descending, and a page continues after the key of
the last item it showed (keyset paging): items added meanwhile sort before that key, so they
neither shift the next page nor show up twice.

The cursor is that key behind a checksum of the key and the list's name (whose list, which
filter), base64url: opaque to clients, and a cursor edited, cut short or given by another list
is refused as `invalid_cursor` rather than read as another position. The checksum is not a
secret: a forged cursor would only position a list within what its caller may see anyway.
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
from typing import Generic, Protocol, TypeVar

from server.domain.errors import InvalidInput
from server.domain.times import epoch_ms, from_epoch_ms

# Generous for the milliseconds and an id, short enough that decoding costs nothing.
MAX_CURSOR_CHARS = 200
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_CHECKSUM_BYTES = 8
# Epoch milliseconds, a dot, the item's id (printable ASCII: ids are generated ASCII).
_KEY = re.compile(r"(0|[1-9][0-9]{0,14})\.([\x21-\x7e]{1,100})")


class Listed(Protocol):
    """What a list pages by: every stored time is to the millisecond, as MongoDB keeps it."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


T = TypeVar("T", bound=Listed)


@dataclass(frozen=True, slots=True)
class PageKey:
    """Where an item sorts in a list: stores page with it."""

    created_at: datetime
    item_id: str

    @classmethod
    def of(cls, item: Listed) -> PageKey:
        return cls(item.created_at, item.id)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # None: this page is the list's last


def comes_after(item: Listed, key: PageKey) -> bool:
    """Whether the item sorts after the key in a newest-first list (it is older, or as old
    with a smaller id): what the next page holds."""
    return (item.created_at, item.id) < (key.created_at, key.item_id)


def newest_first(items: Sequence[T], limit: int, after: PageKey | None) -> list[T]:
    """Up to `limit` items, newest first, after `after`: a store's page held in memory."""
    found = [item for item in items if after is None or comes_after(item, after)]
    found.sort(key=lambda item: (item.created_at, item.id), reverse=True)
    return found[:limit]


def page_of(found: Sequence[T], limit: int, list_name: str) -> Page[T]:
    """The page from up to `limit + 1` items read newest first: the one beyond `limit` only
    shows that there is a next page. `list_name` names the list and its filter; only the same
    list takes the cursor back."""
    items = list(found[:limit])
    if len(found) <= limit:
        return Page(items, None)
    return Page(items, encode_cursor(PageKey.of(items[-1]), list_name))


def encode_cursor(key: PageKey, list_name: str) -> str:
    text = f"{epoch_ms(key.created_at)}.{key.item_id}".encode("ascii")
    raw = _checksum(text, list_name) + text
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, list_name: str) -> PageKey:
    """The key a cursor of the list `list_name` holds, or InvalidInput `invalid_cursor`."""
    if len(cursor) > MAX_CURSOR_CHARS or not _BASE64URL.fullmatch(cursor):
        raise _invalid()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error:
        raise _invalid() from None
    checksum, text = raw[:_CHECKSUM_BYTES], raw[_CHECKSUM_BYTES:]
    if not hmac.compare_digest(checksum, _checksum(text, list_name)):
        raise _invalid()
    match = _KEY.fullmatch(text.decode("ascii", errors="replace"))
    if match is None:
        raise _invalid()
    try:
        key = PageKey(from_epoch_ms(int(match[1])), match[2])
    except OverflowError:  # past the year 9999
        raise _invalid() from None
    # Only the one spelling this module writes: a cursor edited into another (extra bits in the
    # last character) is not one of ours.
    if encode_cursor(key, list_name) != cursor:
        raise _invalid()
    return key


def _checksum(text: bytes, list_name: str) -> bytes:
    digest = hashlib.blake2b(digest_size=_CHECKSUM_BYTES, person=b"list-cursor")
    digest.update(list_name.encode("utf-8") + b"\x00")  # no name is a prefix of another's
    digest.update(text)
    return digest.digest()


def _invalid() -> InvalidInput:
    return InvalidInput(
        "the cursor is not one this list gave: start again without it", code="invalid_cursor"
    )
