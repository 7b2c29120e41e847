"""The room protocol's test doubles: a room's rules as plain objects, a session on them, and
frames sent at a fixed clock."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

from channels.protocol import (
    ChatState,
    Command,
    Limits,
    Publish,
    Reply,
    RoomSession,
)
from server.domain.chat import TokenBucket
from server.domain.identity import Identity, Role

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOST = Identity("host-1", Role.HOST, name="Mia")
SHOPPER = Identity("shopper-1", Role.SHOPPER, name="Leo")
MODERATOR = Identity("mod-1", Role.MODERATOR)


class Rules:
    def __init__(self) -> None:
        self.host_id = HOST.user_id
        self.slow_mode_seconds = 0
        self.blocked_words: list[str] = []
        self.mutes: dict[str, datetime] = {}
        self.messages: set[str] = set()
        self.chat: dict[str, ChatState] = {}
        self.chat_burst, self.chat_per_second = 5, 1.0

    def muted_until(self, user_id: str, now: datetime) -> datetime | None:
        until = self.mutes.get(user_id)
        return until if until is not None and until > now else None

    def knows_message(self, message_id: str) -> bool:
        return message_id in self.messages

    def chat_state(self, user_id: str) -> ChatState:
        return self.chat.setdefault(user_id, ChatState(TokenBucket(capacity=5, rate=1.0)))


def session(identity: Identity, rules: Rules | None = None, **limits: int) -> RoomSession:
    counter = itertools.count(1)
    return RoomSession(
        identity, rules or Rules(), limits=Limits(**limits), new_id=lambda: f"m{next(counter)}"
    )


def send(s: RoomSession, frame: object, mono: float = 0.0) -> list[Command]:
    raw = frame if isinstance(frame, str | bytes) else json.dumps(frame)
    commands, _ = s.handle(raw, mono=mono, now=NOW)
    return commands


def published(commands: list[Command]) -> dict[str, object]:
    """The event the frame publishes (the one Publish among its commands)."""
    (event,) = [command.event for command in commands if isinstance(command, Publish)]
    return event


def error_code(commands: list[Command]) -> str:
    reply = commands[0]
    assert isinstance(reply, Reply)
    assert reply.frame["type"] == "error"
    return str(reply.frame["code"])
