"""Who is banned from each room, as claims ask it.

A ban closes the user's sockets in the room and refuses new ones; their claims over HTTP are
refused here. A flash sale sends thousands of claims to one room in a second, so the room's
bans are read once for all of them, and again at most once a second: a ban reaches the claims
of every process within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from server.domain.errors import LiveshopError
from server.ports import RoomStore

log = logging.getLogger("liveshop.bans")

FRESH_FOR_SECONDS = 1.0
ROOMS_KEPT = 1000


class RoomBans:
    def __init__(self, rooms: RoomStore, *, fresh_for: float = FRESH_FOR_SECONDS) -> None:
        self._rooms = rooms
        self._fresh_for = fresh_for
        # Per room: the last list read and when, and the read under way, if any.
        self._known: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()
        self._reading: dict[str, asyncio.Task[frozenset[str]]] = {}

    async def is_banned(self, room_id: str, user_id: str) -> bool:
        known = self._known.get(room_id)
        if known is None or time.monotonic() - known[0] > self._fresh_for:
            banned = await self._read(room_id, known)
        else:
            banned = known[1]
        return user_id in banned

    async def _read(
        self, room_id: str, known: tuple[float, frozenset[str]] | None
    ) -> frozenset[str]:
        reading = self._reading.get(room_id)
        if reading is None:  # the first claim to find the list stale reads it for the others
            reading = asyncio.ensure_future(self._rooms.banned_users(room_id))
            self._reading[room_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(room_id, None))
        try:
            # Shielded: a claimer that goes away must not cancel the read the others wait for.
            banned = await asyncio.shield(reading)
        except LiveshopError as error:
            if known is None:
                raise
            # The database is away: the list read last stands for another period, so claims
            # do not each wait out a failing read (refusals need no database at all).
            log.warning("room_bans_stale", extra={"room_id": room_id, "code": error.code})
            self._known[room_id] = (time.monotonic(), known[1])
            return known[1]
        self._known[room_id] = (time.monotonic(), banned)
        self._known.move_to_end(room_id)
        if len(self._known) > ROOMS_KEPT:
            self._known.popitem(last=False)
        return banned
