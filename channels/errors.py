"""Why a viewer cannot join a room; the endpoint turns each into its close code."""

from __future__ import annotations

from server.domain.errors import Conflict, Forbidden, Unavailable


class RoomEnded(Conflict):
    code = "room_ended"


class Banned(Forbidden):
    code = "banned"


class Draining(Unavailable):
    code = "draining"
