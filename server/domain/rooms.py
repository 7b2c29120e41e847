"""Room lifecycle and who may change a room. Pure rules, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from server.domain.errors import Conflict, Forbidden
from server.domain.identity import Identity, Role
from server.domain.products import Product

# Mutes running at once in a room, at most: they are kept in the room's document, and shown with
# the room. A moderator silences a few spammers a show; banning is for more.
MAX_MUTES = 1000
MAX_SLOW_MODE_SECONDS = 3600
# Rooms one host may have live at once: a seller running a few shows side by side (markets,
# languages), not one account filling the public list of live rooms.
MAX_LIVE_ROOMS_PER_HOST = 5
# An end its process has not told the room of by then is told by any process's housekeeping:
# that process may have died, paused or lost Redis after storing it, and the host may never
# send the end again.
END_TOLD_WITHIN = timedelta(seconds=10)


class RoomStatus(StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


@dataclass(slots=True)
class Room:
    id: str
    host_id: str
    title: str
    status: RoomStatus
    created_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    pinned_product_id: str | None = None
    slow_mode_seconds: int = 0
    blocked_words: list[str] = field(default_factory=list)
    # Likes and peak viewers as last kept (RoomStore.keep_counters). The live figures are
    # Redis's, which a restart may lose and which expire a day after the room's last viewer.
    kept_likes: int = 0
    kept_peak_viewers: int = 0
    end_untold: bool = False  # ended, and the room not yet told (see END_TOLD_WITHIN)

    def start(self, now: datetime) -> None:
        if self.status is not RoomStatus.SCHEDULED:
            raise Conflict(
                f"room is {self.status}, only a scheduled room can start", code="invalid_room_state"
            )
        self.status = RoomStatus.LIVE
        self.started_at = now

    def end(self, now: datetime) -> None:
        if self.status is RoomStatus.ENDED:
            raise Conflict("room has already ended", code="invalid_room_state")
        self.status = RoomStatus.ENDED
        self.ended_at = now
        self.end_untold = True

    def pin(self, product_id: str) -> None:
        if self.status is RoomStatus.ENDED:
            raise room_has_ended()
        self.pinned_product_id = product_id


def room_has_ended() -> Conflict:
    return Conflict("room has ended", code="invalid_room_state")


def too_many_live_rooms() -> Conflict:
    return Conflict(
        f"you have {MAX_LIVE_ROOMS_PER_HOST} rooms live, the most one host may: end one first",
        code="too_many_live_rooms",
    )


def ensure_can_manage(room: Room, who: Identity, action: str = "change this room") -> None:
    """Only the room's host or an admin changes a room (or reads its figures)."""
    if who.role is Role.ADMIN or (who.role is Role.HOST and who.user_id == room.host_id):
        return
    raise Forbidden(f"only the room's host can {action}")


def can_moderate(room_host_id: str, who: Identity) -> bool:
    """The host, moderators and admins moderate chat."""
    if who.role in (Role.ADMIN, Role.MODERATOR):
        return True
    return who.role is Role.HOST and who.user_id == room_host_id


def ensure_hosts_own(room: Room, product: Product) -> None:
    """A room sells (and shows) its host's own goods: another seller's would book their stock."""
    if product.owner_id != room.host_id:
        raise Forbidden("the product does not belong to the room's host", code="not_your_product")


def too_many_mutes() -> Conflict:
    return Conflict(
        f"{MAX_MUTES} users are muted in this room already: ban, or wait for a mute to end",
        code="too_many_mutes",
    )
