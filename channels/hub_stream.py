"""The hub's part that keeps each room in step with the broker's stream: adopt its position,
fill a gap from history, and when history is lost read the room again and send its viewers
away to reload."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from channels.broker import Broker
from channels.close_codes import CloseCode
from channels.room_state import LocalRoom, RoomView
from server.metrics import Metrics

log = logging.getLogger("liveshop.hub")

RoomLoader = Callable[[str], Awaitable[RoomView]]


class StreamFollower:
    """Mixed into the Hub, which provides these."""

    broker: Broker
    metrics: Metrics
    _load_room: RoomLoader
    _fan_out: Callable[[LocalRoom, int, dict[str, Any], str], None]
    _spawn: Callable[[Coroutine[Any, Any, Any]], None]

    async def _sync(self, room: LocalRoom) -> None:
        """Compare with the broker's position: adopt it, fill a gap, or reset on a new epoch."""
        position = await self.broker.position(room.room_id)
        if room.last_seq is None:
            room.last_seq, room.epoch = position.seq, position.epoch
            await self._fill(room)
        elif position.epoch != room.epoch:
            await self._reset(room, position.seq, position.epoch)
        elif position.seq > room.last_seq:
            await self._fill(room)

    async def _fill(self, room: LocalRoom) -> None:
        if room.filling or room.reloading or room.last_seq is None or room.epoch is None:
            return
        room.filling = True
        try:
            for _ in range(3):
                epoch = room.epoch
                frames = await self.broker.history(room.room_id, room.last_seq, epoch)
                if room.epoch != epoch or room.reloading:
                    return  # history was found lost meanwhile: the reset fills once it is done
                if frames is None:
                    position = await self.broker.position(room.room_id)
                    await self._reset(room, position.seq, position.epoch)
                    return
                for text in frames:
                    event = json.loads(text)
                    if int(event["seq"]) == room.last_seq + 1:
                        self._fan_out(room, int(event["seq"]), event, text)
                if self._drain_pending(room):
                    return
        finally:
            room.filling = False

    def _drain_pending(self, room: LocalRoom) -> bool:
        """Fan out held events that now follow on; True when nothing is left waiting."""
        for seq, event, text in room.next_in_line():
            self._fan_out(room, seq, event, text)
        return not room.pending

    async def _reset(self, room: LocalRoom, seq: int, epoch: str) -> None:
        """History is gone: viewers here reconnect and learn they must reload. The room is read
        again from the stores first, since the new epoch's events up to `seq` are in no history
        (an offer ended, one launched) and hellos are made from it: joiners wait for it, events
        arriving meanwhile wait too, and the viewers are sent away once it is done. Several
        checks can find the same loss at once (the tick, a frame of the new epoch, a fill): the
        first resets, and the others, once it is done, find nothing left to do."""
        async with room.reset_lock:
            if epoch != room.epoch or room.last_seq is None or seq > room.last_seq:
                await self._read_room_again(room, seq, epoch)
        if not self._drain_pending(room):
            self._spawn(self._fill(room))

    async def _read_room_again(self, room: LocalRoom, seq: int, epoch: str) -> None:
        self.metrics.stream_resets.inc()
        log.warning("room_stream_reset", extra={"room_id": room.room_id})
        room.last_seq, room.epoch, room.pending = seq, epoch, []
        here, read_again = list(room.connections), asyncio.get_running_loop().create_future()
        room.reloading, room.ready = True, read_again
        try:
            read = room.begin_read()
            room.load(await self._load_room(room.room_id), read)
        except Exception as exc:  # a store away: what the room holds stays, as before
            log.warning(
                "room_reload_failed", extra={"room_id": room.room_id, "error": type(exc).__name__}
            )
        finally:
            room.reloading = False
            read_again.set_result(None)
        for conn in here:
            conn.abort(CloseCode.RESYNC, "room history was lost: reconnect")
