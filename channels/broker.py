"""The broker port: one ordered event stream per room, shared by every server process.

A room event published anywhere gets the room's next sequence number, is kept in a bounded
history for reconnecting clients, and reaches every process subscribed to the room. The `epoch`
names one unbroken history: it changes when history is lost (Redis flushed or restarted), so a
client holding a sequence number of another epoch knows it cannot recover and must reload.

Delivery is at-most-once (pub/sub): subscribers detect gaps by sequence number and fill them
from `history`. Frames travel as the exact JSON text sent to websocket clients, so each process
encodes nothing per viewer.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from server.domain.rooms import MAX_SLOW_MODE_SECONDS

# A process that has not reported its viewers for this long is presumed dead.
STALE_SECONDS = 10.0
# How long a spaced turn is remembered: the longest spacing asked (slow mode's longest).
SPACED_TURNS_KEPT_SECONDS = float(MAX_SLOW_MODE_SECONDS)
# How long the counters remember a process's last report and each of its tallies (see
# CounterReport) after it last reported: far longer than any report takes to arrive.
REPORT_TRACE_SECONDS = 3600.0
# A room's stream, history and counters are forgotten a day after they were last written (Redis
# expires them; the in-process broker sweeps them): an ended show's do not pile up.
KEPT_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class StreamPosition:
    seq: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Counters:
    likes: int
    viewers: int
    peak_viewers: int


@dataclass(frozen=True, slots=True)
class CounterReport:
    """What one process tells of a room. Likes go as a running total, so that a report counted
    twice (sent again after its reply was lost) or late (overtaken by a later one) adds nothing;
    the number orders the viewers, so that an older report's never replace a newer one's."""

    tally: int  # this process's tally of the room: one per opening of the room here
    number: int  # raised with every report the process makes, whatever the room
    likes: int  # tapped in the room here since the tally began
    # Of those, what the last answered report counted: what the room's counters already hold,
    # unless they lost the tally (Redis lost its data), when only the rest is added.
    likes_counted: int
    viewers: int  # connected here now


class BrokerListener(Protocol):
    """What a broker calls back into (the hub). Calls happen on the event loop, never blocking."""

    def on_room_frame(self, room_id: str, text: str) -> None:
        """A room event frame (with seq and epoch) or a control frame (type starts with '_')."""

    def on_user_frame(self, user_id: str, text: str) -> None:
        """A private frame for one user's connections."""

    def on_room_subscribed(self, room_id: str) -> None:
        """The room's subscription is (re)established: anything published earlier may be missed."""


class Broker(Protocol):
    node_id: str

    def attach(self, listener: BrokerListener) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise when the broker is unreachable (readiness)."""

    async def publish(
        self,
        room_id: str,
        event: dict[str, Any],
        *,
        topic: str | None = None,
        last: bool = False,
        order: int | None = None,
    ) -> int:
        """Append the event to the room's stream; return its sequence number. An event on a
        `topic` that an earlier event closed (`last=True`) is dropped instead, and 0 returned,
        in the same atomic step: nothing said late about an ended offer can follow its end.
        So is one whose `order` is not above that of the last event on its topic that had one:
        figures read apart and sent late cannot undo a newer one, nor repeat it."""

    async def publish_control(self, room_id: str, control: dict[str, Any]) -> None:
        """Reach every process serving the room, outside the stream (no seq, no history)."""

    async def publish_private(self, user_id: str, event: dict[str, Any]) -> None: ...

    async def subscribe_room(self, room_id: str) -> None: ...

    async def unsubscribe_room(self, room_id: str) -> None: ...

    async def subscribe_user(self, user_id: str) -> None: ...

    async def unsubscribe_user(self, user_id: str) -> None: ...

    async def position(self, room_id: str) -> StreamPosition:
        """The room's latest sequence number and epoch (seq 0 for a room with no events)."""

    async def history(self, room_id: str, after_seq: int, epoch: str) -> list[str] | None:
        """Frames with seq > after_seq in order, or None when some of them are gone."""

    async def update_counters(
        self, room_id: str, report: CounterReport, *, kept: tuple[int, int] = (0, 0)
    ) -> Counters:
        """Count this process's likes not counted yet and take its viewer count (unless a later
        report of this process was taken already); return the room's totals. A room with no
        counters (new, or Redis lost or expired them) starts from `kept`: its likes and peak
        viewers as last kept where they outlive Redis."""

    async def read_counters(self, room_id: str) -> Counters:
        """The room's totals, changing nothing."""

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        """True for exactly one caller per room, name and period, across processes."""

    async def take_turn(self, room_id: str, name: str, burst: int, per_second: float) -> bool:
        """True while the room's `name` has been taken at most `burst` times at once and
        `per_second` after that, across processes (a token bucket); False takes nothing."""

    async def take_spaced_turn(self, room_id: str, name: str, seconds: float) -> bool:
        """True when the room's `name` was last taken `seconds` ago or more (or not within
        SPACED_TURNS_KEPT_SECONDS), across processes; False takes nothing. Unlike a bucket's,
        the spacing is the caller's each time: a shorter one lets the next turn come sooner."""


def new_epoch() -> str:
    return secrets.token_hex(4)


def encode_body(event: dict[str, Any]) -> str:
    """The event as compact JSON; `seq` and `epoch` go before it (`stamp`)."""
    if "type" not in event:
        raise ValueError("a room event needs a type")
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    if not body.isascii():
        try:
            body.encode()
        except UnicodeEncodeError:
            # A lone surrogate (a client's `ref` cut inside an emoji) parses as JSON but cannot
            # be sent as UTF-8: written raw, the send failed and left the socket deaf. Escaped,
            # it goes back as the client wrote it.
            body = json.dumps(event, separators=(",", ":"))
    return body


def stamp(body: str, seq: int, epoch: str) -> str:
    """Prefix seq and epoch to an encoded event, without decoding it again."""
    return f'{{"seq":{seq},"epoch":"{epoch}",{body[1:]}'


def seq_of(frame: str) -> int:
    """A stamped frame's seq, read without decoding the whole frame."""
    return int(frame[7 : frame.index(",", 7)])


def room_channel(room_id: str) -> str:
    return f"liveshop:room:{room_id}"


def user_channel(user_id: str) -> str:
    return f"liveshop:user:{user_id}"
