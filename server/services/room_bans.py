"""Who is banned from each room, as claims ask it.

A ban closes the user's sockets in the room and refuses new ones; their claims over HTTP are
refused here. A flash sale sends thousands of claims to one room in a second, so the room's
bans are read once for all of them, and again once the list is a second old: a ban reaches the
claims of every process within a second and a read. Claims wait for that read, but not for a
database that hangs: past STALE_WAIT_SECONDS of the read, the list read last answers them.
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
# A read takes a millisecond or two; one that takes this long is stuck on a database that
# hangs, and the claims waiting on it go by the list read last (the read goes on).
STALE_WAIT_SECONDS = 0.5
ROOMS_KEPT = 1000


class RoomBans:
    def __init__(
        self,
        rooms: RoomStore,
        *,
        fresh_for: float = FRESH_FOR_SECONDS,
        stale_wait: float = STALE_WAIT_SECONDS,
    ) -> None:
        self._rooms = rooms
        self._fresh_for = fresh_for
        self._stale_wait = stale_wait
        # Per room: the last list read and when; the read under way, if any, and its start.
        self._known: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()
        self._reading: dict[str, tuple[float, asyncio.Task[frozenset[str]]]] = {}

    async def is_banned(self, room_id: str, user_id: str) -> bool:
        known = self._known.get(room_id)
        if known is not None and time.monotonic() - known[0] <= self._fresh_for:
            return user_id in known[1]
        started, reading = self._read(room_id)
        if known is None:  # nothing to go by: wait for the read, whatever it takes
            # Shielded: a claimer that goes away must not cancel the read the others wait for.
            return user_id in await asyncio.shield(reading)
        wait = started + self._stale_wait - time.monotonic()
        if wait > 0:
            await asyncio.wait({reading}, timeout=wait)
        if reading.done() and not reading.cancelled() and reading.exception() is None:
            return user_id in reading.result()
        return user_id in known[1]  # the read failed, or is stuck: the list read last stands

    def _read(self, room_id: str) -> tuple[float, asyncio.Task[frozenset[str]]]:
        """The read of the room's list under way, started by the first claim that needs it."""
        under_way = self._reading.get(room_id)
        if under_way is None:
            reading = asyncio.ensure_future(self._read_and_keep(room_id))
            under_way = self._reading[room_id] = (time.monotonic(), reading)
            reading.add_done_callback(lambda done: self._read_done(room_id, done))
        return under_way

    async def _read_and_keep(self, room_id: str) -> frozenset[str]:
        try:
            banned = await self._rooms.banned_users(room_id)
        except Exception as exc:
            known = self._known.get(room_id)
            if known is not None:
                # The database is away: the list read last stands for another period, after
                # which one read tries again (and one line is logged, not one per claim).
                code = exc.code if isinstance(exc, LiveshopError) else type(exc).__name__
                log.warning("room_bans_stale", extra={"room_id": room_id, "code": code})
                self._known[room_id] = (time.monotonic(), known[1])
            raise
        self._known[room_id] = (time.monotonic(), banned)
        self._known.move_to_end(room_id)
        if len(self._known) > ROOMS_KEPT:
            self._known.popitem(last=False)
        return banned

    def _read_done(self, room_id: str, reading: asyncio.Task[frozenset[str]]) -> None:
        del self._reading[room_id]
        if not reading.cancelled():
            reading.exception()  # retrieved: once claims stop waiting, nobody else would
