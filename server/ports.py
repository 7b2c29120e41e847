"""The roles the use cases depend on, one Protocol each. Adapters implement them."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from server.domain.products import Product
from server.domain.rooms import Room, RoomStatus


class ProductStore(Protocol):
    async def create(self, product: Product) -> None: ...

    async def get(self, product_id: str) -> Product:
        """The product, or NotFound."""
        ...


class RoomStore(Protocol):
    async def create(self, room: Room) -> None: ...

    async def get(self, room_id: str) -> Room:
        """The room, or NotFound."""
        ...

    async def list(self, *, status: RoomStatus | None, limit: int) -> builtins.list[Room]: ...

    async def save(self, room: Room, *, expected_status: RoomStatus) -> None:
        """Write the room's lifecycle and showcase if its stored status is still
        `expected_status`, else Conflict. Moderation settings (slow mode, blocked words) have
        their own setters and are left as stored, so a stale read never undoes them."""
        ...

    async def set_slow_mode(self, room_id: str, seconds: int) -> None: ...

    async def set_blocked_words(self, room_id: str, words: builtins.list[str]) -> None: ...

    async def ban(self, room_id: str, user_id: str, *, by: str, at: datetime) -> None: ...

    async def is_banned(self, room_id: str, user_id: str) -> bool: ...

    async def mute(self, room_id: str, user_id: str, *, until: datetime) -> None: ...

    async def mutes(self, room_id: str) -> Mapping[str, datetime]:
        """Users muted in the room and until when (expired entries may be included)."""
        ...

    async def ping(self) -> None:
        """Raise when the store is unreachable (readiness)."""
        ...


class RoomEvents(Protocol):
    """Publishes one event to a room's ordered stream (every viewer on every process)."""

    async def publish_room_event(self, room_id: str, event: dict[str, Any]) -> int:
        """Publish and return the event's sequence number."""
        ...

    async def publish_room_control(self, room_id: str, control: dict[str, Any]) -> None:
        """Tell every process serving the room something viewers do not see (settings changed)."""
        ...
