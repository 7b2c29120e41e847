"""Why a viewer cannot join a room, or stay in it; the endpoint and the protocol turn each into
its close code."""

from __future__ import annotations

from server.domain.errors import Conflict, Forbidden, Unauthorized, Unavailable


class RoomEnded(Conflict):
    code = "room_ended"


class Banned(Forbidden):
    code = "banned"


class Draining(Unavailable):
    code = "draining"


class TokenExpired(Unauthorized):
    """A signed-in socket's token expired while it was open."""

    code = "token_expired"
