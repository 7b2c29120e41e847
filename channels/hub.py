"""Local fan-out: the rooms and users this process serves, fed by the broker.

One broker subscription per room with local viewers (not per socket). Each room event arrives
as its final JSON text and is pushed, as that same string, to every local connection. The hub
follows each room's sequence numbers: a gap (pub/sub lost a message) is filled from history,
a changed epoch (history lost) sends local viewers away to reconnect and reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from channels.broker import Broker, encode_body, seq_of
from channels.close_codes import CloseCode
from channels.connection import Connection, FrameSender
from channels.direct_send import DirectSocket
from channels.errors import Banned, Draining, RoomEnded
from channels.hub_stream import RoomLoader, StreamFollower
from channels.room_counters import CounterKeeper, RoomCounters
from channels.room_state import LocalRoom, hello_frame
from channels.user_watch import UserWatches
from server.background import BackgroundTasks
from server.domain.errors import LiveshopError, NotFound, Unavailable
from server.domain.identity import Identity
from server.domain.rooms import can_moderate
from server.metrics import Metrics

log = logging.getLogger("liveshop.hub")

# A room with no local viewers keeps its subscription this long, so a quick reconnect is cheap.
LINGER_SECONDS = 15.0
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
# Longest a stop waits to report its rooms' last likes and to stop counting its viewers.
LEAVE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class HubLimits:
    send_queue_frames: int = 256
    counter_interval: float = 1.0
    chat_burst: int = 5
    chat_per_second: float = 1.0
    batch_seconds: float = 0.1


class Hub(StreamFollower):
    def __init__(
        self,
        broker: Broker,
        load_room: RoomLoader,
        metrics: Metrics,
        limits: HubLimits,
        keep_counters: CounterKeeper | None = None,
        load_settings: RoomLoader | None = None,
    ) -> None:
        """`load_room` reads a room whole from the stores (its opening, a history lost);
        `load_settings` as much of it as its moderation needs (the room and its mutes), for
        the reads of the settings alone."""
        self.broker = broker
        self.metrics = metrics
        # Read when scraped: no open, close or failed open can leave it behind; rooms still
        # opening are not counted (anyone may knock on a room id that does not exist).
        metrics.rooms.set_function(lambda: len(self._opened_rooms()))
        self.limits = limits
        self.draining = False
        self._load_room = load_room
        self._load_settings = load_settings or load_room
        self._rooms: dict[str, LocalRoom] = {}
        self._subscriptions = asyncio.Lock()
        self._users = UserWatches(broker, self._subscriptions)
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._background = BackgroundTasks(log, "hub_task_failed")
        self._counters = RoomCounters(
            broker,
            self.publish_room_event,
            limits.counter_interval,
            keep_counters,
            self._background,
        )
        self._all_left = asyncio.Event()  # set when a draining hub has no viewers left
        broker.attach(self)

    # Lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="hub-ticker")

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new viewers, close every open socket with 1001 so clients go elsewhere: each
        once the frame it is having carried out is answered (a claim's order), within the
        grace."""
        self.draining = True
        # Its viewers are no longer counted here, sent first: else, reconnected elsewhere, they
        # would count twice until this process's count went stale, and lift the peak for good.
        leaving = self._counters.start_leaving(self._opened_rooms())
        for conn in self._connections():
            conn.close_when_answered(CloseCode.GOING_AWAY, "server restarting")
        if self.connection_count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_left.wait(), grace_seconds)
        for conn in self._connections():  # answers still owed after the grace go unsent
            conn.close_after_flush(CloseCode.GOING_AWAY, "server restarting")
        await self._counters.finish_leaving(leaving, LEAVE_SECONDS)

    def _connections(self) -> list[Connection]:
        return [conn for room in list(self._rooms.values()) for conn in list(room.connections)]

    async def close(self) -> None:
        if self._ticker is not None:
            # Stopped between ticks: a tick under way has taken the rooms' likes, and would lose
            # them if cancelled before Redis counts them (unless Redis holds it past the bound).
            self._stopping.set()
            if not (await asyncio.wait([self._ticker], timeout=LEAVE_SECONDS))[0]:
                self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        # The likes since the last tick, and the figures kept.
        await self._counters.finish_leaving(
            self._counters.start_leaving(self._opened_rooms()), LEAVE_SECONDS
        )
        await self._background.close()
        await self.broker.close()

    def _opened_rooms(self) -> list[LocalRoom]:
        return [room for room in self._rooms.values() if room.opened]

    def connection_count(self) -> int:
        return sum(len(room.connections) for room in self._rooms.values())

    def room(self, room_id: str) -> LocalRoom | None:
        return self._rooms.get(room_id)

    # Joining and leaving ---------------------------------------------------------------------

    async def join(
        self,
        room_id: str,
        identity: Identity,
        sender: FrameSender,
        *,
        since: int | None = None,
        epoch: str | None = None,
        batched: bool = False,
        direct: DirectSocket | None = None,
        token_expires: float | None = None,
    ) -> tuple[Connection, LocalRoom]:
        """Register a viewer and queue hello (plus missed events when `since` is recoverable);
        `token_expires` (epoch seconds) ends a signed-in viewer's private frames."""
        if self.draining:
            raise Draining("server is shutting down")
        room = await self._ready_room(room_id)
        if self.draining:  # began while the room opened: its viewers were sent away already
            raise Draining("server is shutting down")
        if room.status == "ended":
            raise RoomEnded("the room has ended")
        if room.banned_lately(identity.user_id) and not (identity.anonymous or identity.staff):
            raise Banned("you are banned from this room")  # after the endpoint's check
        conn = Connection(
            secrets.token_hex(6),
            identity,
            room_id,
            sender,
            limit=self.limits.send_queue_frames,
            on_overflow=self._on_overflow,
            batched=batched,
            direct=direct,
            token_expires=token_expires,
        )
        if batched:
            self._flush_batch(room)  # events already counted in seq0 must not reach it again
        # Registered before anything is awaited: events from here on queue behind hello.
        room.add(conn)
        room.empty_since = None
        self.metrics.connections.inc()
        seq0, epoch0, snapshot = room.last_seq or 0, room.epoch or "", room.snapshot()
        try:
            if not identity.anonymous:
                await self._users.watch(identity.user_id, conn)
            missed = await self._missed(room_id, since, epoch, seq0, epoch0)
        except BaseException as exc:
            await self.leave(conn)
            if isinstance(exc, LiveshopError | asyncio.CancelledError):
                raise
            raise Unavailable("live events are unavailable, try again") from exc
        if self.draining:  # began while this joined: the drain did not see it to send it away
            await self.leave(conn)
            raise Draining("server is shutting down")
        if missed and can_moderate(room.host_id, identity):
            room.recall_chat(missed)
        hello = hello_frame(room, identity, seq0, epoch0, missed is not None, snapshot)
        conn.start([encode_body(hello), *(missed or [])])
        return conn, room

    async def _missed(
        self, room_id: str, since: int | None, epoch: str | None, seq0: int, epoch0: str
    ) -> list[str] | None:
        """The frames after `since` up to the hello's seq, or None when they cannot be had."""
        if since is None or epoch != epoch0 or not 0 <= since <= seq0:
            return None
        if since == seq0:
            return []
        missed = await self.broker.history(room_id, since, epoch0)
        if missed is None:
            return None
        return [frame for frame in missed if seq_of(frame) <= seq0]

    async def leave(self, conn: Connection) -> None:
        await conn.finish()
        self._detach(conn)
        if not conn.identity.anonymous:
            await self._users.unwatch(conn.identity.user_id, conn)

    def _detach(self, conn: Connection) -> None:
        """Stop fanning out to a connection and stop counting it (idempotent)."""
        room = self._rooms.get(conn.room_id)
        if room is not None and room.remove(conn):
            self.metrics.connections.dec()
            if not room.connections:
                room.empty_since = time.monotonic()
        self._users.discard(conn)
        if self.draining and not self.connection_count():
            self._all_left.set()

    async def _ready_room(self, room_id: str) -> LocalRoom:
        room = self._rooms.get(room_id)
        if room is None:
            room = LocalRoom(
                room_id,
                chat_burst=self.limits.chat_burst,
                chat_per_second=self.limits.chat_per_second,
            )
            room.ready = asyncio.get_running_loop().create_future()
            self._rooms[room_id] = room
            self._spawn(self._open_room(room))
        assert room.ready is not None
        await asyncio.shield(room.ready)
        return room

    async def _open_room(self, room: LocalRoom) -> None:
        ready = room.ready  # the first joiners' (a reset while it opens sets another)
        assert ready is not None
        try:
            # A room that does not exist must leave nothing behind: the stream's position
            # settles an epoch, which Redis keeps a day, and anyone may knock on any room id.
            await self._load_settings(room.room_id)
            # Where the stream stood before the stores were read: the events published while
            # they are read (a slow mode, a mute, an offer's end) are replayed from there over
            # what was read. Each is published after what it tells is stored, and applying
            # one to a room that already holds it changes nothing.
            before = await self.broker.position(room.room_id)
            read = room.begin_read()
            room.load(await self._load_room(room.room_id), read)
            async with self._subscriptions:
                await self.broker.subscribe_room(room.room_id)
            await asyncio.wait_for(room.subscribed.wait(), SUBSCRIBE_TIMEOUT_SECONDS)
            # A change of blocked words is told, not kept in the stream: one told before the
            # subscription was heard here, and stored after the read, is read now. The first
            # read holds all else: should the stores be away now, the room opens with it, and
            # each tick reads the settings again until a read goes through.
            try:
                await self._reload(room)
            except LiveshopError as exc:
                room.settings_unread = True
                log.warning(
                    "room_reload_failed", extra={"room_id": room.room_id, "error": exc.code}
                )
            room.last_seq, room.epoch = before.seq, before.epoch
            await self._sync(room)
            ready.set_result(None)
        except Exception as exc:
            if self._rooms.get(room.room_id) is room:
                del self._rooms[room.room_id]
            error = exc if isinstance(exc, LiveshopError) else Unavailable("room unavailable")
            if isinstance(exc, TimeoutError):  # pub/sub away or slow: an outage, not a bug
                log.warning("room_open_timed_out", extra={"room_id": room.room_id})
            elif not isinstance(exc, LiveshopError):
                log.exception("room_open_failed", extra={"room_id": room.room_id})
            ready.set_exception(error)
            ready.exception()  # consumed here; joiners re-raise it from their await
            if not isinstance(exc, NotFound):  # a room that does not exist was never subscribed
                await self._unsubscribe_unserved(room.room_id)

    async def _close_room(self, room: LocalRoom) -> None:
        async with self._subscriptions:
            if room.connections or self._rooms.get(room.room_id) is not room:
                return
            del self._rooms[room.room_id]
            try:
                await self._counters.leave(room)
            except Exception as exc:  # closed here all the same; its last likes go uncounted
                extra = {"room_id": room.room_id, "error": type(exc).__name__}
                if isinstance(exc, LiveshopError):  # Redis away
                    log.warning("room_counters_not_left", extra=extra)
                else:
                    log.exception("room_counters_not_left", extra=extra)
        await self._unsubscribe_unserved(room.room_id)

    async def _unsubscribe_unserved(self, room_id: str) -> None:
        """Else the broker feeds this process a room it does not serve: subscribed by the open
        that failed, or by an earlier one whose own unsubscribe found this open under way."""
        async with self._subscriptions:
            if room_id not in self._rooms:  # unless a joiner opened it again meanwhile
                with contextlib.suppress(Exception):  # Redis away: not subscribed again on return
                    await self.broker.unsubscribe_room(room_id)

    def _on_overflow(self, conn: Connection) -> None:
        self._detach(conn)
        self.metrics.slow_disconnects.inc()
        log.info("slow_consumer_closed", extra={"room_id": conn.room_id, "conn": conn.conn_id})

    # Publishing (the RoomEvents port) --------------------------------------------------------

    async def publish_room_event(
        self,
        room_id: str,
        event: dict[str, Any],
        *,
        topic: str | None = None,
        last: bool = False,
        order: int | None = None,
    ) -> int:
        # A broker that cannot answer raises Unavailable itself (adapters/unreachable.py); any
        # other error is a bug, and stays one.
        started = time.perf_counter()
        seq = await self.broker.publish(room_id, event, topic=topic, last=last, order=order)
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        return seq

    async def publish_room_control(self, room_id: str, control: dict[str, Any]) -> None:
        await self.broker.publish_control(room_id, {**control, "type": f"_{control['type']}"})

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        return await self.broker.try_gate(room_id, name, seconds)

    async def send_private(self, user_id: str, event: dict[str, Any]) -> None:
        """Reach one user on all their connections, on every process."""
        await self.broker.publish_private(user_id, event)

    def open_offer_ids(self) -> list[str]:
        """Offers still open in the rooms this process serves (for the reaper)."""
        return [offer_id for room in self._rooms.values() for offer_id in room.offers]

    # Broker callbacks ------------------------------------------------------------------------

    def on_room_frame(self, room_id: str, text: str) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        event = json.loads(text)
        kind = event.get("type", "")
        if kind.startswith("_"):
            self._on_control(room, kind)
            return
        seq, epoch = int(event["seq"]), str(event["epoch"])
        if room.last_seq is None or room.filling or room.reloading:
            room.pending.append((seq, epoch, event, text))
            return
        if epoch != room.epoch:
            self._spawn(self._sync(room))
            return
        if seq <= room.last_seq:
            return
        if seq != room.last_seq + 1:
            room.pending.append((seq, epoch, event, text))
            self.metrics.stream_gaps.inc(seq - room.last_seq - 1)
            self._spawn(self._fill(room))
            return
        self._fan_out(room, seq, event, text)

    def on_user_frame(self, user_id: str, text: str) -> None:
        # Not to a socket whose token has expired, but for the orders it claimed itself: the
        # user's orders and addresses are the token's to hear, as over HTTP (Connection.hears).
        now = time.time()
        connections = [c for c in self._users.connections(user_id) if c.hears(text, now)]
        for conn in connections:
            conn.push(text)
        self.metrics.frames_out.inc(len(connections))

    def on_room_subscribed(self, room_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        if room.subscribed.is_set():
            # A re-subscription after a broker reconnect: events may have been missed, and a
            # change of settings, which is told but not kept in the stream.
            self._spawn(self._sync(room))
            self._spawn(self._reload(room))
        room.subscribed.set()

    def _on_control(self, room: LocalRoom, kind: str) -> None:
        if kind == "_settings_changed":
            self._spawn(self._reload(room))

    async def _reload(self, room: LocalRoom) -> None:
        read, unbans = room.begin_read(), room.unbans_heard
        view = await self._load_settings(room.room_id)
        room.take_moderation(view, read)
        # A ban stored while its `user.banned` could not be told (Redis away: the moderator
        # heard "unavailable") is carried out when the pub/sub comes back, which reloads; not
        # for a user whose unban was heard meanwhile, which the read may not have seen.
        self._send_away(room, {u for u in view.banned if room.unbanned_at.get(u, 0) <= unbans})

    def _fan_out(self, room: LocalRoom, seq: int, event: dict[str, Any], text: str) -> None:
        room.last_seq = seq
        room.apply(event)
        for conn in list(room.direct):
            conn.push(text)
        self.metrics.frames_out.inc(len(room.direct))
        if room.batched:
            room.batch.append(text)
            if room.batch_timer is None:
                room.batch_timer = asyncio.get_running_loop().call_later(
                    self.limits.batch_seconds, self._flush_batch, room
                )
        kind = event.get("type")
        if kind in ("user.banned", "room.ended"):
            self._flush_batch(room)  # the closing event must reach everyone before the close
        if kind == "user.banned":
            self._send_away(room, {str(event.get("user_id"))})
        elif kind == "room.ended":
            for conn in list(room.connections):
                conn.close_after_flush(CloseCode.ROOM_ENDED, "the room has ended")

    def _send_away(self, room: LocalRoom, banned: Collection[str]) -> None:
        """Close the local sockets of users banned from the room (staff answer to no ban)."""
        for conn in list(room.connections):
            if conn.identity.user_id in banned and not conn.identity.staff:
                conn.close_after_flush(CloseCode.BANNED, "banned from this room")

    def _flush_batch(self, room: LocalRoom) -> None:
        """Send the room events gathered for batched viewers: one frame, encoded once."""
        text = room.take_batch()
        if text is None:
            return
        for conn in list(room.batched):
            conn.push(text)
        self.metrics.frames_out.inc(len(room.batched))

    # Counters and housekeeping, once per interval --------------------------------------------

    async def _tick_forever(self) -> None:
        while not await self._stopping_within(self.limits.counter_interval):
            rooms = list(self._rooms.values())
            results = await asyncio.gather(
                *(self._tick_room(room) for room in rooms), return_exceptions=True
            )
            for room, result in zip(rooms, results, strict=True):
                if isinstance(result, Exception):
                    log.warning(
                        "room_tick_failed",
                        extra={"room_id": room.room_id, "error": type(result).__name__},
                    )

    async def _stopping_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _tick_room(self, room: LocalRoom) -> None:
        if not room.opened:  # while the room opens or is read again: next tick
            return
        if room.empty_since is not None and time.monotonic() - room.empty_since > LINGER_SECONDS:
            await self._close_room(room)
            return
        if room.settings_unread:
            await self._reload(room)
            room.settings_unread = False
        await self._sync(room)
        await self._counters.tick(room, serving=not self.draining)

    def add_likes(self, room: LocalRoom, count: int) -> None:
        room.likes_tapped += count

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._background.spawn(coro)
