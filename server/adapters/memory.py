"""In-memory stores: the product ships them for unit tests and quick experiments."""

from __future__ import annotations

import builtins
import copy
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import datetime

from server.domain.errors import Conflict, NotFound, ProductOffersChanged
from server.domain.pages import PageKey, newest_first
from server.domain.products import Product
from server.domain.rooms import (
    MAX_LIVE_ROOMS_PER_HOST,
    MAX_MUTES,
    Room,
    RoomStatus,
    room_has_ended,
    too_many_live_rooms,
    too_many_mutes,
)


class MemoryProductStore:
    def __init__(self) -> None:
        self._products: dict[str, Product] = {}

    async def create(self, product: Product) -> None:
        if product.id in self._products:
            raise Conflict(f"product {product.id} exists")
        self._products[product.id] = copy.deepcopy(product)

    async def get(self, product_id: str) -> Product:
        try:
            return copy.deepcopy(self._products[product_id])
        except KeyError:
            raise NotFound(f"product {product_id} not found") from None

    async def set_stock(self, product_id: str, stock: int, *, launches: int) -> Product:
        product = await self.get(product_id)
        if product.launches != launches:
            raise ProductOffersChanged("an offer of this product was launched meanwhile")
        product.stock = stock
        self._products[product_id] = copy.deepcopy(product)
        return product

    async def count_launch(self, product_id: str, *, at_least: int) -> bool:
        product = self._products.get(product_id)
        if product is None or product.stock < at_least:
            return False
        product.launches += 1
        return True


class MemoryRoomStore:
    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}
        self._bans: set[tuple[str, str]] = set()
        self._mutes: dict[str, dict[str, datetime]] = {}
        self._pins: Counter[str] = Counter()

    async def create(self, room: Room) -> None:
        if room.id in self._rooms:
            raise Conflict(f"room {room.id} exists")
        self._rooms[room.id] = copy.deepcopy(room)

    async def get(self, room_id: str) -> Room:
        try:
            return copy.deepcopy(self._rooms[room_id])
        except KeyError:
            raise NotFound(f"room {room_id} not found") from None

    async def list(
        self, *, status: RoomStatus | None, limit: int, after: PageKey | None = None
    ) -> builtins.list[Room]:
        rooms = [r for r in self._rooms.values() if status is None or r.status is status]
        return [copy.deepcopy(r) for r in newest_first(rooms, limit, after)]

    async def save(self, room: Room, *, expected_status: RoomStatus) -> None:
        stored = self._rooms.get(room.id)
        if stored is None:
            raise NotFound(f"room {room.id} not found")
        if stored.status is not expected_status:
            raise Conflict("room changed meanwhile", code="invalid_room_state")
        if room.status is RoomStatus.LIVE and stored.status is not RoomStatus.LIVE:
            live = [r for r in self._rooms.values() if r.host_id == room.host_id]
            if sum(r.status is RoomStatus.LIVE for r in live) >= MAX_LIVE_ROOMS_PER_HOST:
                raise too_many_live_rooms()
        updated = copy.deepcopy(room)
        updated.pinned_product_id = stored.pinned_product_id
        updated.slow_mode_seconds = stored.slow_mode_seconds
        updated.blocked_words = stored.blocked_words
        updated.kept_likes, updated.kept_peak_viewers = stored.kept_likes, stored.kept_peak_viewers
        self._rooms[room.id] = updated

    async def pin(self, room_id: str, product_id: str) -> int:
        stored = await self._stored(room_id)
        if stored.status is RoomStatus.ENDED:
            raise room_has_ended()
        stored.pinned_product_id = product_id
        self._pins[room_id] += 1
        return self._pins[room_id]

    async def untold_ends(
        self, ended_by: datetime, limit: int, *, skip: Collection[str] = ()
    ) -> builtins.list[str]:
        return [
            room.id
            for room in self._rooms.values()
            if room.end_untold
            and room.ended_at is not None
            and room.ended_at <= ended_by
            and room.id not in skip
        ][:limit]

    async def end_told(self, room_id: str) -> None:
        (await self._stored(room_id)).end_untold = False

    async def set_slow_mode(self, room_id: str, seconds: int) -> None:
        (await self._stored(room_id)).slow_mode_seconds = seconds

    async def keep_counters(self, room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        room = self._rooms.get(room_id)
        if room is None:
            return 0, 0  # as MongoDB's update of no document
        room.kept_likes = max(room.kept_likes, likes)
        room.kept_peak_viewers = max(room.kept_peak_viewers, peak_viewers)
        return room.kept_likes, room.kept_peak_viewers

    async def set_blocked_words(self, room_id: str, words: builtins.list[str]) -> None:
        (await self._stored(room_id)).blocked_words = list(words)

    async def ban(self, room_id: str, user_id: str, *, by: str, at: datetime) -> None:
        self._bans.add((room_id, user_id))

    async def unban(self, room_id: str, user_id: str) -> bool:
        banned = (room_id, user_id) in self._bans
        self._bans.discard((room_id, user_id))
        return banned

    async def is_banned(self, room_id: str, user_id: str) -> bool:
        return (room_id, user_id) in self._bans

    async def banned_users(self, room_id: str) -> frozenset[str]:
        return frozenset(user for room, user in self._bans if room == room_id)

    async def mute(self, room_id: str, user_id: str, *, until: datetime, at: datetime) -> None:
        await self._stored(room_id)
        mutes = self._mutes.get(room_id, {})
        running = {user: end for user, end in mutes.items() if end > at and user != user_id}
        if len(running) >= MAX_MUTES:
            raise too_many_mutes()
        self._mutes[room_id] = running | {user_id: until}

    async def unmute(self, room_id: str, user_id: str, *, at: datetime) -> bool:
        await self._stored(room_id)
        until = self._mutes.get(room_id, {}).pop(user_id, None)
        return until is not None and until > at

    async def mutes(self, room_id: str) -> Mapping[str, datetime]:
        return dict(self._mutes.get(room_id, {}))

    async def ping(self) -> None:
        return None

    async def _stored(self, room_id: str) -> Room:
        try:
            return self._rooms[room_id]
        except KeyError:
            raise NotFound(f"room {room_id} not found") from None
