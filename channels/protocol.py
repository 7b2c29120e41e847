"""The room protocol for one connection: a client frame in, commands out. No I/O here.

The endpoint glue carries out the commands (publish, reply, store a ban, close). Everything the
protocol needs to know about the room comes through `RoomRules`, so it can be driven by tests
with plain objects and fixed clocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, assert_never

from pydantic import ValidationError

from channels.close_codes import CloseCode
from channels.errors import TokenExpired
from schemas.http import code_of_fields, faults_of
from schemas.ws import (
    FIELD_CODES,
    ChatDelete,
    ChatSend,
    ClientFrame,
    Like,
    OfferClaim,
    Ping,
    RoomSlowMode,
    UserBan,
    UserMute,
    UserUnban,
    UserUnmute,
    client_frame,
)
from server import strict_json
from server.domain.chat import (
    MAX_CHAT_CHARS,
    TokenBucket,
    clean_text,
    find_blocked_word,
)
from server.domain.errors import Forbidden, InvalidInput, LiveshopError, NotFound, RateLimited
from server.domain.identity import Identity
from server.domain.rooms import can_moderate
from server.domain.times import iso_z, utc_ms

# The longest name a client frame may carry for itself (a claim's idempotency key).
MAX_REF_CHARS = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
# A user's likes in a room, over all their sockets here: taps come in frames of up to 100, and
# no thumb taps 50 times a second for long.
LIKES_BURST = 500
LIKES_PER_SECOND = 50
TOO_FAST = "you are sending messages too fast"


class RoomRules(Protocol):
    """What one process knows of the room right now."""

    host_id: str
    slow_mode_seconds: int
    blocked_words: list[str]
    chat_burst: int
    chat_per_second: float

    def muted_until(self, user_id: str, now: datetime) -> datetime | None: ...

    def knows_message(self, message_id: str) -> bool: ...

    def chat_state(self, user_id: str) -> ChatState: ...


@dataclass(slots=True)
class ChatState:
    """Per user and room: the burst bucket, and the likes they may still send, shared by
    their sockets, so that opening more sockets does not make the host's like count grow
    faster. (Slow mode is kept room-wide alone: see _chat_turns.)"""

    bucket: TokenBucket
    likes: TokenBucket = field(
        default_factory=lambda: TokenBucket(capacity=LIKES_BURST, rate=LIKES_PER_SECOND)
    )


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 8192
    max_bad_frames: int = 10
    chat_max_chars: int = MAX_CHAT_CHARS
    # Frames of any kind per connection: a burst, then a steady rate.
    frame_burst: int = 40
    frames_per_second: float = 20.0


# Commands the glue carries out, in order.
@dataclass(frozen=True, slots=True)
class Reply:
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Publish:
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AddLikes:
    count: int


@dataclass(frozen=True, slots=True)
class StoreMute:
    user_id: str
    until: datetime
    at: datetime


@dataclass(frozen=True, slots=True)
class StoreBan:
    user_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Lift:
    """A mute or ban of the user lifted (`what`: "mute" or "ban"), if one holds at `at`; the
    commands after it (the room's announcement) only then."""

    user_id: str
    what: str
    at: datetime


@dataclass(frozen=True, slots=True)
class StoreSlowMode:
    seconds: int


@dataclass(frozen=True, slots=True)
class Turn:
    """A turn taken room-wide (Broker.take_turn), refused with RateLimited(`refusal`, `code`):
    a user's sockets on other processes keep their own count, which this one cannot see."""

    name: str
    burst: int
    per_second: float
    code: str
    refusal: str


@dataclass(frozen=True, slots=True)
class SpacedTurn:
    """A turn taken room-wide `seconds` after the last one at least (Broker.take_spaced_turn),
    refused with RateLimited(`refusal`, `code`): slow mode, over a user's every socket."""

    name: str
    seconds: int
    code: str
    refusal: str


@dataclass(frozen=True, slots=True)
class Claim:
    frame: OfferClaim


@dataclass(frozen=True, slots=True)
class Close:
    code: CloseCode
    reason: str


Command = (
    Reply
    | Publish
    | AddLikes
    | Claim
    | StoreMute
    | StoreBan
    | Lift
    | StoreSlowMode
    | Turn
    | SpacedTurn
    | Close
)


class Malformed(InvalidInput):
    """A frame no working client sends: not JSON, not an object with a type, of no type this
    protocol has, binary or too large. It counts towards closing the socket (4029)."""


def error_frame(error: LiveshopError, ref: str | None) -> dict[str, Any]:
    return {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "ref": ref,
        **error.details,
    }


class RoomSession:
    def __init__(
        self,
        identity: Identity,
        rules: RoomRules,
        *,
        limits: Limits,
        new_id: Callable[[], str],
        token_expires: float | None = None,  # epoch seconds
    ) -> None:
        self.identity = identity
        self.rules = rules
        self.token_expires = token_expires
        self.limits = limits
        self._new_id = new_id
        self._bad_frames = 0
        # The `type` the last message named, None if it named none: a refused claim is still
        # a claim to the operator's figures (liveshop_claims), as over HTTP.
        self.last_type: str | None = None
        self._frames = TokenBucket(capacity=limits.frame_burst, rate=limits.frames_per_second)

    def handle(
        self, raw: str | bytes, *, mono: float, now: datetime
    ) -> tuple[list[Command], str | None]:
        """React to one websocket message: the commands to carry out, and what the client
        called the frame (its `ref`), for the error should carrying them out fail. `mono` is
        a monotonic clock, `now` wall time in UTC."""
        ref: str | None = None
        self.last_type = None
        try:
            data = self._decode(raw)
            self.last_type = data["type"]
            # Taken before the frame is validated, so that the error a malformed frame causes
            # still names the frame it answers.
            ref = _ref_of(data)
            # Before the fields are checked: refused frames are answered, so they spend the
            # budget too, or a client could have them answered as fast as it sends them.
            if not self._frames.take(mono):
                return self._refuse(RateLimited("too many frames, slow down"), ref, abuse=True), ref
            frame = self._validate(data)
            commands = self._dispatch(frame, mono=mono, now=now)
        except Malformed as error:
            return self._refuse(error, ref, abuse=True), ref
        except TokenExpired as error:
            closing = Close(CloseCode.UNAUTHORIZED, "token expired")
            return [*self._refuse(error, ref, abuse=False), closing], ref
        except LiveshopError as error:
            return self._refuse(error, ref, abuse=False), ref
        return commands, ref

    def _refuse(self, error: LiveshopError, ref: str | None, *, abuse: bool) -> list[Command]:
        commands: list[Command] = [Reply(error_frame(error, ref))]
        # What no client would send but a broken or hostile one (not JSON, no type, an unknown
        # type, a flood) counts as abuse. A frame refused for what it says (a claim's address, a
        # chat line too long, a mute) is ordinary life: a shopper mistyping a form must not be
        # thrown out of the room.
        if abuse:
            self._bad_frames += 1
            if self._bad_frames >= self.limits.max_bad_frames:
                commands.append(Close(CloseCode.ABUSE, "too many bad frames"))
        return commands

    def _decode(self, raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, bytes):
            raise Malformed("send JSON text frames, not binary", code="binary_not_supported")
        if len(raw.encode()) > self.limits.max_frame_bytes:
            raise Malformed(
                f"frame is larger than {self.limits.max_frame_bytes} bytes", code="frame_too_large"
            )
        try:
            data = strict_json.loads(raw)
        except (ValueError, RecursionError):  # nested deeper than the parser goes: not for us
            raise Malformed("frame is not valid JSON", code="malformed_json") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise Malformed("frame must be an object with a string type", code="invalid_frame")
        return data

    def _validate(self, data: dict[str, Any]) -> ClientFrame:
        try:
            return client_frame.validate_python(data)
        except ValidationError as exc:
            errors = faults_of(exc)
            if errors[0]["type"] == "union_tag_invalid":
                raise Malformed(
                    f"unknown frame type {data['type'][:40]!r}", code="unknown_type"
                ) from None
            # Each error's place starts with the frame's type, then the field.
            fields = [".".join(str(part) for part in error["loc"][1:]) for error in errors]
            code = code_of_fields(fields, FIELD_CODES.get(data["type"], {}))
            message = f"{fields[0] or 'frame'}: {errors[0]['msg']}"
            raise InvalidInput(message, code=code or "invalid_frame") from None

    def _dispatch(self, frame: ClientFrame, *, mono: float, now: datetime) -> list[Command]:
        if isinstance(frame, Ping):
            return [Reply({"type": "pong", "ref": frame.ref, "server_time": iso_z(now)})]
        if self.identity.anonymous:
            raise Forbidden("sign in to take part")
        if self.token_expires is not None and now.timestamp() >= self.token_expires:
            # The socket's rights end with its token, as a request's do: it may go on watching
            # (and pinging) until its next act, then reconnects with a new token and `since`.
            raise TokenExpired("token has expired: reconnect with a new token")
        if isinstance(frame, ChatSend):
            return self._chat(frame, mono=mono, now=now)
        if isinstance(frame, Like):
            if not self.rules.chat_state(self.identity.user_id).likes.take(mono, frame.count):
                raise RateLimited("you are sending likes too fast")
            return [AddLikes(frame.count)]
        if isinstance(frame, OfferClaim):
            return [Claim(frame)]
        if not can_moderate(self.rules.host_id, self.identity):
            raise Forbidden("only the host and moderators can do that")
        if isinstance(frame, ChatDelete):
            if not self.rules.knows_message(frame.message_id):
                raise NotFound("no such recent message", code="unknown_message")
            event = {"type": "chat.deleted", "message_id": frame.message_id, "by": self._who()}
            return [Publish(event)]
        if isinstance(frame, UserMute):
            self._refuse_muting_the_host_or_yourself(frame.user_id)
            # To the millisecond, as MongoDB keeps it: every process then tells the same time.
            until = utc_ms(now + timedelta(seconds=frame.duration_seconds))
            return [
                StoreMute(frame.user_id, until, now),
                Publish({"type": "user.muted", "user_id": frame.user_id, "until": iso_z(until)}),
            ]
        if isinstance(frame, UserBan):
            self._refuse_muting_the_host_or_yourself(frame.user_id)
            return [
                StoreBan(frame.user_id, now),
                Publish({"type": "user.banned", "user_id": frame.user_id}),
            ]
        if isinstance(frame, UserUnmute):
            unmuted = {"type": "user.unmuted", "user_id": frame.user_id}
            return [Lift(frame.user_id, "mute", now), Publish(unmuted)]
        if isinstance(frame, UserUnban):
            unbanned = {"type": "user.unbanned", "user_id": frame.user_id}
            return [Lift(frame.user_id, "ban", now), Publish(unbanned)]
        if isinstance(frame, RoomSlowMode):
            return [
                StoreSlowMode(frame.seconds),
                Publish({"type": "room.slow_mode", "seconds": frame.seconds}),
            ]
        assert_never(frame)

    def _chat(self, frame: ChatSend, *, mono: float, now: datetime) -> list[Command]:
        user_id = self.identity.user_id
        muted = None if self.identity.staff else self.rules.muted_until(user_id, now)
        if muted is not None:
            raise Forbidden(f"you are muted until {iso_z(muted)}", code="muted")
        text = clean_text(frame.text, self.limits.chat_max_chars)
        state = self.rules.chat_state(user_id)
        moderator = can_moderate(self.rules.host_id, self.identity)
        # Before the blocked words: a line they refuse counts too, so the filter cannot be
        # probed (nor its search run) faster than anyone may chat.
        if not state.bucket.take(mono):
            raise RateLimited(TOO_FAST)
        if not moderator and find_blocked_word(text, self.rules.blocked_words) is not None:
            raise Forbidden("the message contains a blocked word", code="blocked_word")
        event = {
            "type": "chat.message",
            "id": self._new_id(),
            "text": text,
            "user": self._who(),
            "client_id": frame.client_id,
            "at": iso_z(now),
        }
        return [*self._chat_turns(user_id, moderator), Publish(event)]

    def _chat_turns(self, user_id: str, moderator: bool) -> list[Command]:
        """The checks above, room-wide: the rate limit's, then slow mode's, the last before the
        line goes out (a line the rate limit refuses starts no slow mode wait). Slow mode is
        held room-wide alone, over all of a user's sockets on every process: each line spaced
        from their last by the setting of the moment, which the host may have changed."""
        burst, rate = self.rules.chat_burst, self.rules.chat_per_second
        turns: list[Command] = [Turn(f"chat:{user_id}", burst, rate, "rate_limited", TOO_FAST)]
        if not moderator:
            # Taken with slow mode off too (a spacing of 0 always passes): it notes the line,
            # and a host who turns slow mode on holds who has just spoken.
            seconds = self.rules.slow_mode_seconds
            refusal = f"slow mode: one message every {seconds} s"
            turns.append(SpacedTurn(f"slow-mode:{user_id}", seconds, "slow_mode", refusal))
        return turns

    def _refuse_muting_the_host_or_yourself(self, user_id: str) -> None:
        if user_id in (self.rules.host_id, self.identity.user_id):
            raise Forbidden("the host and yourself cannot be muted or banned")

    def _who(self) -> dict[str, Any]:
        who = self.identity
        return {"id": who.user_id, "name": who.name, "role": who.role.value}


def _ref_of(data: dict[str, Any]) -> str | None:
    """What the client called this frame (`ref`, else a chat line's `client_id` or a claim's
    `idempotency_key`), if it is a string of a sensible length: echoed, never trusted. Not one
    holding a lone surrogate, which JSON lets a client write but no text holds: echoed, it
    would make the error that explains the mistake unreadable to a strict JSON parser."""
    for name in ("ref", "client_id", "idempotency_key"):
        value = data.get(name)
        if isinstance(value, str) and _echoable(value):
            return value
    return None


def _echoable(name: str) -> bool:
    if not 0 < len(name) <= MAX_REF_CHARS:
        return False
    return name.isprintable() or _SURROGATE.search(name) is None
