"""What one process knows of a room it serves: its viewers here, its rules, its stream cursor."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.connection import Connection
from channels.protocol import LIKES_BURST, LIKES_PER_SECOND, ChatState
from server.domain.chat import TokenBucket
from server.domain.identity import Identity
from server.domain.rooms import Room
from server.domain.times import iso_z

# Chat ids a moderator may still delete (the same bound as history, roughly).
RECENT_MESSAGES = 1000
# How long a ban heard here refuses a join, whatever the stores said when the endpoint looked:
# a join takes far less, from that look to its place in the room.
BAN_HEARD_SECONDS = 60.0
# How long a user's chat state outlives their last connection here: until their likes would
# have refilled, so that reconnecting does not buy a new allowance.
CHAT_STATE_KEPT_SECONDS = LIKES_BURST / LIKES_PER_SECOND
# Each opening of a room in this process counts its likes apart (CounterReport.tally).
_TALLIES = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RoomView:
    """What the stores say of a room when a process starts serving it."""

    room: Room
    pinned_product: dict[str, Any] | None = None
    mutes: Mapping[str, datetime] = field(default_factory=dict)
    offers: list[dict[str, Any]] = field(default_factory=list)  # open offers, as on the wire
    banned: frozenset[str] = frozenset()  # read with the settings alone (Hub._reload)


@dataclass(frozen=True, slots=True)
class ModerationRead:
    """A read of the room's moderation from the stores: the how-manyth begun, and the mutes or
    unmutes, and the slow modes, heard before it began."""

    number: int
    mute_changes: int
    slow_mode_changes: int


@dataclass(slots=True)
class ReadSetting:
    """One moderation setting as the stream tells it and reads of the stores bring it: the
    changes heard, and the latest read taken. A read is taken unless a change was heard while
    it was on its way, or a read begun later was taken already: the room's is newer then, and
    the stream brings the rest."""

    changes: int = 0
    read_taken: int = 0

    def take(self, number: int, changes_before: int) -> bool:
        if self.changes != changes_before or number <= self.read_taken:
            return False
        self.read_taken = number
        return True


@dataclass(eq=False)
class LocalRoom:
    room_id: str
    host_id: str = ""
    title: str = ""
    status: str = "live"
    slow_mode_seconds: int = 0
    blocked_words: list[str] = field(default_factory=list)
    pinned_product: dict[str, Any] | None = None
    mutes: dict[str, datetime] = field(default_factory=dict)
    # Reads of the stores begun, and each setting's: a read may be older than what was heard.
    # Blocked words change by no event, only by reads.
    moderation_reads: int = 0
    mutes_read: ReadSetting = field(default_factory=ReadSetting)
    slow_mode_read: ReadSetting = field(default_factory=ReadSetting)
    words_read: ReadSetting = field(default_factory=ReadSetting)
    offers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Bans heard here lately, and when (monotonic): a viewer whose join was checked against the
    # stores just before their ban was stored must not get in once it has been heard. Only
    # lately: the stores are what count, and an unban whose event was lost must not keep
    # refusing anyone here (see `banned_lately`).
    bans_heard: dict[str, float] = field(default_factory=dict)
    # Unbans heard, counted, and each user's last (its count): a read of the bans begun
    # before a user's unban is out of date for them (Hub._reload).
    unbans_heard: int = 0
    unbanned_at: dict[str, int] = field(default_factory=dict)
    # Every local viewer; `batched` are those that take room events in batch frames.
    connections: set[Connection] = field(default_factory=set)
    direct: set[Connection] = field(default_factory=set)
    batched: set[Connection] = field(default_factory=set)
    batch: list[str] = field(default_factory=list)
    batch_timer: asyncio.TimerHandle | None = None
    chat_burst: int = 5
    chat_per_second: float = 1.0

    # Stream cursor: the last event fanned out here. None until the subscription is ready.
    last_seq: int | None = None
    epoch: str | None = None
    pending: list[tuple[int, str, dict[str, Any], str]] = field(default_factory=list)
    filling: bool = False
    # History lost: the room is being read again (events wait meanwhile), one read at a time.
    reloading: bool = False
    # The settings' read at the room's opening failed: each tick tries it again.
    settings_unread: bool = False
    reset_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Future[None] | None = None
    empty_since: float | None = None

    # Counters: this opening's tally of likes tapped here, and of them what Redis is known to
    # have counted (see CounterReport); totals last seen in the stream.
    tally: int = field(default_factory=lambda: next(_TALLIES))
    likes_tapped: int = 0
    likes_counted: int = 0
    likes: int = 0
    viewers: int = 0
    peak_viewers: int = 0
    # Likes and peak viewers as kept in the room store, as far as this process knows (read
    # with the room, or kept since), and when it last kept them, and what peak: where Redis's
    # counters of the room start again, should it lose them.
    kept: tuple[int, int] = (0, 0)
    kept_at: float = 0.0
    peak_tried: int = 0
    keeping: bool = False  # a keep on its way: one at a time

    _recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Lines deleted lately, so that one replayed to a moderator after its deletion was heard
    # here (the replay ends where the reconnect began) does not come back (see recall_chat).
    _deleted: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _chat: dict[str, ChatState] = field(default_factory=dict)
    # Users who left, oldest first: when, and their chat state (see CHAT_STATE_KEPT_SECONDS).
    _left: OrderedDict[str, tuple[float, ChatState]] = field(default_factory=OrderedDict)
    # Each user's connections here, so that a leave knows at once whether it was their last:
    # a search of `connections` made every leave cost the whole room, and a crowd leaving at
    # once (the show ends, a network drops) cost the room's size squared.
    _per_user: Counter[str] = field(default_factory=Counter)

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        (self.batched if conn.batched else self.direct).add(conn)
        self._per_user[conn.identity.user_id] += 1

    @property
    def opened(self) -> bool:
        """Opened, and not being opened again (after a reset)."""
        ready = self.ready
        return ready is not None and ready.done() and ready.exception() is None

    @property
    def viewer_count(self) -> int:
        """Viewers here: a user's several sockets (a phone and a laptop) count once, and each
        anonymous socket is a viewer of its own."""
        return len(self._per_user)

    def remove(self, conn: Connection) -> bool:
        """Forget a viewer; False when it was not here (already removed). A user's chat state
        (their rate limits) is kept CHAT_STATE_KEPT_SECONDS after their last connection here
        leaves."""
        if conn not in self.connections:
            return False
        self.connections.discard(conn)
        self.direct.discard(conn)
        self.batched.discard(conn)
        user_id = conn.identity.user_id
        self._per_user[user_id] -= 1
        if self._per_user[user_id] == 0:
            del self._per_user[user_id]
            state = self._chat.pop(user_id, None)
            if state is not None:
                self._keep_a_while(user_id, state)
        return True

    def _keep_a_while(self, user_id: str, state: ChatState) -> None:
        now = time.monotonic()
        self._left.pop(user_id, None)
        self._left[user_id] = (now, state)
        while now - next(iter(self._left.values()))[0] > CHAT_STATE_KEPT_SECONDS:
            self._left.popitem(last=False)  # the oldest first: a leave costs O(1) on average

    def take_batch(self) -> str | None:
        """The room events gathered for batched viewers as one frame (None when there are
        none), the batch emptied and its timer stopped."""
        if self.batch_timer is not None:
            self.batch_timer.cancel()
            self.batch_timer = None
        if not self.batch:
            return None
        text = self.batch[0] if len(self.batch) == 1 else _batch_frame(self.batch)
        self.batch.clear()
        return text

    def next_in_line(self) -> list[tuple[int, dict[str, Any], str]]:
        """Take the held events that now follow on from `last_seq`, in order; those after a
        gap keep waiting, and those of another epoch or already fanned out are dropped."""
        assert self.last_seq is not None
        expected = self.last_seq + 1
        following: list[tuple[int, dict[str, Any], str]] = []
        waiting: list[tuple[int, str, dict[str, Any], str]] = []
        for seq, epoch, event, text in sorted(self.pending, key=lambda item: item[0]):
            if epoch != self.epoch or seq < expected:
                continue
            if seq == expected:
                following.append((seq, event, text))
                expected += 1
            else:
                waiting.append((seq, epoch, event, text))
        self.pending = waiting
        return following

    def load(self, view: RoomView, read: ModerationRead) -> None:
        """The room as read from the stores, by the read `begin_read` began."""
        room = view.room
        self.host_id = room.host_id
        self.title = room.title
        self.status = room.status.value
        self.take_moderation(view, read)
        self.pinned_product = view.pinned_product
        self.offers = {str(offer["id"]): dict(offer) for offer in view.offers}
        self.kept = (room.kept_likes, room.kept_peak_viewers)
        # Until the first counter tick: the likes kept at most 10 s ago, not 0 (the stream's
        # `likes` frames only ever raise it).
        self.likes = max(self.likes, room.kept_likes)

    def begin_read(self) -> ModerationRead:
        """Call before reading the room from the stores (`load`, `take_moderation`)."""
        self.moderation_reads += 1
        return ModerationRead(
            self.moderation_reads, self.mutes_read.changes, self.slow_mode_read.changes
        )

    def take_moderation(self, view: RoomView, read: ModerationRead) -> None:
        """The room's slow mode, blocked words and mutes as read from the stores (the settings
        changed, the pub/sub came back, or the room is read again). Slow mode and mutes as
        `take_mutes` takes mutes, each as its own setting (ReadSetting)."""
        if self.words_read.take(read.number, 0):
            self.blocked_words = list(view.room.blocked_words)
        if self.slow_mode_read.take(read.number, read.slow_mode_changes):
            self.slow_mode_seconds = view.room.slow_mode_seconds
        self.take_mutes(view.mutes, read)

    def take_mutes(self, mutes: Mapping[str, datetime], read: ModerationRead) -> None:
        """The stores' mutes in place of the room's, which would keep a mute lifted meanwhile
        (`user.unmute`); unless a mute or an unmute was heard while they were read, or a read
        begun later was taken already: the room's are newer then, and the stream brings the
        rest."""
        if self.mutes_read.take(read.number, read.mute_changes):
            self.mutes.clear()
            self.mutes.update(mutes)

    def banned_lately(self, user_id: str) -> bool:
        """Whether a ban of the user was heard within BAN_HEARD_SECONDS: longer than a join
        takes from the endpoint's check of the stores."""
        heard = self.bans_heard.get(user_id)
        return heard is not None and time.monotonic() - heard < BAN_HEARD_SECONDS

    def _forget_old_bans(self) -> None:
        now = time.monotonic()
        for user_id, heard in list(self.bans_heard.items()):
            if now - heard >= BAN_HEARD_SECONDS:
                del self.bans_heard[user_id]

    # RoomRules, read by the protocol
    def muted_until(self, user_id: str, now: datetime) -> datetime | None:
        until = self.mutes.get(user_id)
        if until is None:
            return None
        if until <= now:
            del self.mutes[user_id]
            return None
        return until

    def knows_message(self, message_id: str) -> bool:
        return message_id in self._recent

    def chat_state(self, user_id: str) -> ChatState:
        state = self._chat.get(user_id)
        if state is None:
            # One kept past its time is as good as new: its buckets refill with time.
            _, state = self._left.pop(user_id, (0.0, None))
            if state is None:
                state = ChatState(TokenBucket(capacity=self.chat_burst, rate=self.chat_per_second))
            self._chat[user_id] = state
        return state

    def recall_chat(self, frames: list[str]) -> None:
        """Note the chat lines among `frames`, sent again to a moderator who reconnected with
        `since`: theirs to delete, though this process may have opened the room since they
        were said, and never fanned them out itself."""
        for frame in frames:
            if '"chat.' in frame:  # most frames are not: no parse
                self._note_chat(json.loads(frame))

    def _note_chat(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "chat.message":
            message_id = str(event.get("id"))
            if message_id not in self._deleted:
                _keep_last(self._recent, message_id)
        elif kind == "chat.deleted":
            message_id = str(event.get("message_id"))
            self._recent.pop(message_id, None)
            _keep_last(self._deleted, message_id)

    def apply(self, event: dict[str, Any]) -> None:
        """Keep the local view in step with one room event."""
        kind = event.get("type")
        if kind in ("chat.message", "chat.deleted"):
            self._note_chat(event)
        elif kind == "showcase.pinned":
            self.pinned_product = event.get("product")
        elif kind == "likes":
            self.likes = max(self.likes, int(event.get("count", 0)))
        elif kind == "viewers":
            self.viewers = int(event.get("count", 0))
            self.peak_viewers = max(self.peak_viewers, self.viewers)
        elif kind == "user.muted":
            self.mutes[str(event["user_id"])] = datetime.fromisoformat(str(event["until"]))
            self.mutes_read.changes += 1
        elif kind == "user.unmuted":
            self.mutes.pop(str(event["user_id"]), None)
            self.mutes_read.changes += 1
        elif kind == "user.banned":
            self.bans_heard[str(event.get("user_id"))] = time.monotonic()
            self._forget_old_bans()
        elif kind == "user.unbanned":
            self.bans_heard.pop(str(event.get("user_id")), None)
            self.unbans_heard += 1
            self.unbanned_at[str(event.get("user_id"))] = self.unbans_heard
        elif kind == "room.slow_mode":
            self.slow_mode_seconds = int(event.get("seconds", 0))
            self.slow_mode_read.changes += 1
        elif kind == "offer.started":
            offer = dict(event["offer"])
            known = self.offers.get(str(offer["id"]))
            # Sent again, its stock read earlier (or unknown then): the figure held stays.
            if known is not None and (
                offer.get("stock_version") is None or not _is_newer(offer, known)
            ):
                offer["remaining"] = known.get("remaining")
                offer["stock_version"] = known.get("stock_version")
            self.offers[str(offer["id"])] = offer
        elif kind == "offer.stock":
            known = self.offers.get(str(event.get("offer_id")))
            if known is not None and _is_newer(event, known):
                known["remaining"] = event.get("remaining")
                known["stock_version"] = event.get("stock_version")
        elif kind == "offer.ended":
            self.offers.pop(str(event.get("offer_id")), None)
        elif kind == "room.started":
            self.status = "live"
        elif kind == "room.ended":
            self.status = "ended"

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.room_id,
            "title": self.title,
            "host_id": self.host_id,
            "status": self.status,
            "pinned_product": self.pinned_product,
            "offers": list(self.offers.values()),
            "viewers": self.viewers,
            "likes": self.likes,
            "slow_mode_seconds": self.slow_mode_seconds,
        }


def _batch_frame(texts: list[str]) -> str:
    return '{"type":"batch","events":[' + ",".join(texts) + "]}"


def _is_newer(figure: dict[str, Any], known: dict[str, Any]) -> bool:
    """Whether a stock figure replaces the one held: the stream keeps figures in order, but the
    offer held may be newer, read when this process loaded the room. A figure without a version
    (sold out, told at the end of an offer whose stock was lost) always does."""
    new, held = figure.get("stock_version"), known.get("stock_version")
    return not isinstance(new, int) or not isinstance(held, int) or new > held


def _keep_last(ids: OrderedDict[str, None], new: str) -> None:
    ids[new] = None
    if len(ids) > RECENT_MESSAGES:
        ids.popitem(last=False)


def hello_frame(
    room: LocalRoom,
    identity: Identity,
    seq: int,
    epoch: str,
    recovered: bool,
    snapshot: dict[str, Any],
) -> dict[str, Any]:
    """A viewer's first frame: where the room's stream stands, the room, and who they are."""
    now = datetime.now(UTC)
    muted_until = room.muted_until(identity.user_id, now)
    return {
        "type": "hello",
        "seq": seq,
        "epoch": epoch,
        "recovered": recovered,
        "room": snapshot,
        "you": {
            **identity.public(),
            "muted_until": None if muted_until is None else iso_z(muted_until),
        },
        "server_time": iso_z(now),
    }
