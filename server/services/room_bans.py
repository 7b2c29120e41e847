"""Who is banned from each room, as claims ask it.

A ban closes the user's sockets in the room and refuses new ones; their claims over HTTP are
refused here. A flash sale sends thousands of claims to one room in a second, so the room's
bans are read once for all of them, and again once the list is a second old: a ban reaches the
claims of every process within a second and a read. Only a room's first claim waits for the
read; later ones go on with the list read last while the next read is under way, so a database
that hangs holds up no claim that has a list to go by.
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
        if known is None:
            # Shielded: a claimer that goes away must not cancel the read the others wait for.
            return user_id in await asyncio.shield(self._read(room_id))
        if time.monotonic() - known[0] > self._fresh_for:
            self._read(room_id)  # in the background: meanwhile the list read last stands
        return user_id in known[1]

    def _read(self, room_id: str) -> asyncio.Task[frozenset[str]]:
        """The read of the room's list under way, started by the first claim that needs it."""
        reading = self._reading.get(room_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read_and_keep(room_id))
            self._reading[room_id] = reading
            reading.add_done_callback(lambda done: self._read_done(room_id, done))
        return reading

    async def _read_and_keep(self, room_id: str) -> frozenset[str]:
        try:
            banned = await self._rooms.banned_users(room_id)
        except LiveshopError as error:
            known = self._known.get(room_id)
            if known is not None:
                # The database is away: the list read last stands for another period, after
                # which one read tries again (and one line is logged, not one per claim).
                log.warning("room_bans_stale", extra={"room_id": room_id, "code": error.code})
                self._known[room_id] = (time.monotonic(), known[1])
            raise
        self._known[room_id] = (time.monotonic(), banned)
        self._known.move_to_end(room_id)
        if len(self._known) > ROOMS_KEPT:
            self._known.popitem(last=False)
        return banned

    def _read_done(self, room_id: str, reading: asyncio.Task[frozenset[str]]) -> None:
        del self._reading[room_id]
        if reading.cancelled():
            return
        error = reading.exception()  # retrieved: a background read has nobody waiting on it
        if error is not None and not isinstance(error, LiveshopError):
            log.warning("room_bans_read_failed", extra={"error": type(error).__name__})
