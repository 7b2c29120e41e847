"""Who is asking: the claims of a verified access token, or an anonymous viewer."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MAX_USER_ID = 128  # characters of a token's subject (server/auth.py), none of them hidden
# Who made the moves no user made (an expiry, a reservation lost), in an order's history. No
# token may claim it: a user of that name would pass for Liveshop itself in the audit trail.
SYSTEM = "system"


class Role(StrEnum):
    SHOPPER = "shopper"
    HOST = "host"
    MODERATOR = "moderator"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: Role
    name: str | None = None
    country: str | None = None
    anonymous: bool = False

    @classmethod
    def anonymous_viewer(cls, connection_id: str) -> Identity:
        return cls(user_id=f"anon:{connection_id}", role=Role.SHOPPER, anonymous=True)

    @property
    def staff(self) -> bool:
        """The platform's moderators and admins: no room's mute or ban applies to them. Only a
        user's own token says their role, so a moderator may name an admin in a ban without
        knowing it: the ban is kept, and holds nobody while they come as staff."""
        return self.role in (Role.MODERATOR, Role.ADMIN)

    def public(self) -> dict[str, object]:
        return {
            "user_id": None if self.anonymous else self.user_id,
            "role": self.role.value,
            "name": self.name,
            "anonymous": self.anonymous,
        }


def scoped_key(user_id: str, key: str) -> str:
    """A client's idempotency key made unique across users: "user:key", with any ":" and "%"
    in the user id escaped, so that no two (user, key) pairs give the same string (user "x:a"
    with key "k" against user "x" with key "a:k"). Ids without them, by far the usual, give
    what versions before the escaping stored."""
    return f"{_escaped(user_id)}:{key}"


def client_key(user_id: str, scoped: str) -> str:
    """The client's own key back from `scoped_key`, or from the unescaped "user:key" that
    versions before the escaping stored."""
    for prefix in (f"{_escaped(user_id)}:", f"{user_id}:"):
        if scoped.startswith(prefix):
            return scoped[len(prefix) :]
    return scoped


def _escaped(user_id: str) -> str:
    return user_id.replace("%", "%25").replace(":", "%3A")
