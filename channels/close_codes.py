"""Websocket close codes. 4xxx say why; the comment says whether a client should reconnect."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    GOING_AWAY = 1001  # server draining: reconnect (to another process) with since
    INTERNAL_ERROR = 1011  # a fault of the server's own: reconnect with since after a moment
    TRY_AGAIN_LATER = 1013  # Redis or MongoDB away while joining: reconnect with since, backing off
    UNAUTHORIZED = 4001  # bad or expired token: get a new token first
    BANNED = 4003  # banned from this room: do not reconnect
    ROOM_NOT_FOUND = 4004  # do not reconnect
    TOO_SLOW = 4008  # the client fell behind: reconnect with since and recover
    ROOM_ENDED = 4010  # do not reconnect
    RESYNC = 4012  # the room's history was lost: reconnect; hello will say recovered=false
    ABUSE = 4029  # too many bad frames: back off before reconnecting
