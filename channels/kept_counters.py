"""A room's likes and peak viewers, kept where they outlive Redis (RoomStore.keep_counters):
Redis counts them for every process, but a restart may lose them, and they expire a day after
the room's last viewer. Each process serving the room keeps them every KEEP_COUNTERS_SECONDS
and when it stops serving the room; Redis's counters of a room it lost start again from them."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from channels.broker import Counters
from channels.room_state import LocalRoom
from server.background import BackgroundTasks

log = logging.getLogger("liveshop.hub")

# Keeps a room's likes and peak viewers, and answers them as kept by every process.
CounterKeeper = Callable[[str, int, int], Awaitable[tuple[int, int]]]
# What a Redis that loses its data can take from the host's figures (keeping is one write a
# room and process each time).
KEEP_COUNTERS_SECONDS = 10.0


class KeptCounters:
    def __init__(self, keep: CounterKeeper | None, background: BackgroundTasks) -> None:
        self._keep = keep
        self._background = background

    def read(self, room: LocalRoom, counters: Counters, *, closing: bool = False) -> None:
        """The room's counters as just read: kept if they changed and a period has passed
        since the last keep here, or at once when this process stops serving the room. In the
        background, so that a slow database never holds up the room's counters."""
        figures = (counters.likes, counters.peak_viewers)
        if self._keep is None or figures == room.kept:
            return
        if not closing and time.monotonic() - room.kept_at < KEEP_COUNTERS_SECONDS:
            return
        room.kept_at = time.monotonic()  # tried again a period later, should this one fail
        task = self._background.spawn(_keep(self._keep, room, figures))
        if closing:
            self._background.finish_on_close(task)


async def _keep(keep: CounterKeeper, room: LocalRoom, figures: tuple[int, int]) -> None:
    try:
        kept = await keep(room.room_id, *figures)
    except Exception as exc:
        log.warning(
            "room_counters_not_kept", extra={"room_id": room.room_id, "error": type(exc).__name__}
        )
        return
    # As kept by every process: where Redis's counters start again, should it lose them.
    room.kept = kept
