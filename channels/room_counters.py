"""A room's counters: likes tapped and viewers connected on every process, summed in Redis each
interval and told to the room by whichever process wins a short gate; and likes and peak
viewers kept where they outlive Redis (RoomStore.keep_counters), since a Redis restart may lose
them and they expire a day after the room's last viewer. Each process serving the room keeps
them every KEEP_COUNTERS_SECONDS, a new peak at once, and when it stops serving the room;
Redis's counters of a room it lost start again from them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.broker import Broker, CounterReport, Counters
from channels.room_state import LocalRoom
from server.background import BackgroundTasks

log = logging.getLogger("liveshop.hub")

# Keeps a room's likes and peak viewers, and answers them as kept by every process.
CounterKeeper = Callable[[str, int, int], Awaitable[tuple[int, int]]]
Publish = Callable[[str, dict[str, Any]], Awaitable[int]]
Leaving = list[tuple[LocalRoom, asyncio.Task[None]]]
# What a Redis that loses its data can take from the host's figures (keeping is one write a
# room and process each time).
KEEP_COUNTERS_SECONDS = 10.0


class RoomCounters:
    def __init__(
        self,
        broker: Broker,
        publish: Publish,
        interval: float,
        keep: CounterKeeper | None,
        background: BackgroundTasks,
    ) -> None:
        self._broker = broker
        self._publish = publish
        self._interval = interval
        self._keep = keep
        self._background = background
        self._numbers = itertools.count(1)  # orders this process's reports (CounterReport)

    async def tick(self, room: LocalRoom, *, serving: bool = True) -> None:
        """Report this process's likes and viewers, tell the room the totals that moved (one
        process an interval), and keep them. Not `serving` (draining), it reports no viewers:
        those it sent away are counted where they reconnect."""
        counters = await self._report(room, room.viewer_count if serving else 0)
        room_id = room.room_id
        if counters.likes > room.likes and await self._broker.try_gate(
            room_id, "likes", self._interval
        ):
            await self._publish(room_id, {"type": "likes", "count": counters.likes})
        if counters.viewers != room.viewers and await self._broker.try_gate(
            room_id, "viewers", self._interval
        ):
            await self._publish(room_id, {"type": "viewers", "count": counters.viewers})
        self._kept(room, counters, new_peak=await self._keeps_new_peak(room, counters))

    async def _keeps_new_peak(self, room: LocalRoom, counters: Counters) -> bool:
        """Whether this process keeps the peak at once: it rose past any kept or tried here,
        none of this room's keeps is on its way here, and no other process took it (every one
        reads the same peak: one write an interval, not one a process)."""
        peak = counters.peak_viewers
        if self._keep is None or room.keeping or peak <= max(room.kept[1], room.peak_tried):
            return False
        if await self._broker.try_gate(room.room_id, "peak", self._interval):
            return True
        # Another process's to keep. Should its write fail, or it die first, the period's keep
        # takes the peak: a failing database is not asked every tick by every process.
        room.peak_tried = peak
        return False

    async def leave(self, room: LocalRoom) -> None:
        """This process stops serving the room (or is stopping): its last likes and no viewers,
        kept at once."""
        self._kept(room, await self._report(room, 0), closing=True)

    async def _report(self, room: LocalRoom, viewers: int) -> Counters:
        """Report the likes tapped here and this process's viewers. A report that failed, timed
        out or was cut short may have been counted or not: the next one's running total settles
        it either way, and its viewers replace this one's even should this one land later."""
        report = CounterReport(
            tally=room.tally,
            number=next(self._numbers),
            likes=room.likes_tapped,
            likes_counted=room.likes_counted,
            viewers=viewers,
        )
        counters = await self._broker.update_counters(room.room_id, report, kept=room.kept)
        room.likes_counted = max(room.likes_counted, report.likes)
        return counters

    def start_leaving(self, rooms: list[LocalRoom]) -> Leaving:
        """`leave` every room (a process stopping), under way once this returns."""
        return [(room, asyncio.ensure_future(self.leave(room))) for room in rooms]

    async def finish_leaving(self, leaving: Leaving, seconds: float) -> None:
        """Wait for the leaves, at most `seconds`: a stop must not hang on Redis. One cut short
        may have been counted or not; a later report of the room (at close) settles which."""
        if not leaving:
            return
        await asyncio.wait([task for _, task in leaving], timeout=seconds)
        for room, task in leaving:
            if not task.done():
                task.cancel()
                log.warning("room_counters_not_left", extra={"room_id": room.room_id})
            elif not task.cancelled() and (error := task.exception()) is not None:
                log.warning(
                    "room_counters_not_left",
                    extra={"room_id": room.room_id, "error": type(error).__name__},
                )

    def _kept(
        self, room: LocalRoom, counters: Counters, *, closing: bool = False, new_peak: bool = False
    ) -> None:
        """Kept if they changed and a period has passed since the last keep here, or at once
        when closing or for a `new_peak` (the show's headline figure, reached in a rush a Redis
        restart would otherwise take with it). One keep at a time but the closing one, in the
        background: a slow database never holds up the room nor gathers a pile of them."""
        figures = (counters.likes, counters.peak_viewers)
        if self._keep is None or figures == room.kept or (room.keeping and not closing):
            return
        if not (closing or new_peak) and time.monotonic() - room.kept_at < KEEP_COUNTERS_SECONDS:
            return
        # Tried again a period later, should this one fail.
        room.kept_at, room.peak_tried = time.monotonic(), counters.peak_viewers
        room.keeping = True
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
    finally:
        room.keeping = False
    # As kept by every process: where Redis's counters start again, should it lose them.
    room.kept = kept
