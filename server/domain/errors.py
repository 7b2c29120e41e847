"""One error root for Liveshop. HTTP maps these to problem+json, the websocket to `error` frames."""

from __future__ import annotations

from server.domain.text import shown

# The fields of a problem+json answer and of a websocket `error` frame.
RESERVED_FIELDS = frozenset(
    {"type", "title", "status", "detail", "code", "errors", "message", "ref"}
)


class LiveshopError(Exception):
    """Base of every error the product reports to a client; `code` is stable, for machines."""

    code = "error"
    status = 400

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, str] | None = None
    ) -> None:
        message = shown(message)  # it may quote what a client sent: an id, a field
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # Members a client reads besides the code (a problem+json extension, a frame's field):
        # what the message says in words, for machines. Never one of the answer's own fields.
        self.details = details or {}
        if taken := RESERVED_FIELDS.intersection(self.details):
            raise ValueError(f"details may not be named {sorted(taken)}")


class InvalidInput(LiveshopError):
    code = "invalid_input"
    status = 422


class Unauthorized(LiveshopError):
    code = "unauthorized"
    status = 401


class Forbidden(LiveshopError):
    code = "forbidden"
    status = 403


class NotFound(LiveshopError):
    code = "not_found"
    status = 404


class Conflict(LiveshopError):
    code = "conflict"
    status = 409


class RateLimited(LiveshopError):
    code = "rate_limited"
    status = 429


class Unavailable(LiveshopError):
    code = "unavailable"
    status = 503


class Unresponsive(Unavailable):
    """The backend took the whole deadline without answering (frozen, cut off): a call to it
    now would likely wait as long. Clients hear `unavailable` all the same."""


class OfferPaused(Unavailable):
    """The reservation store lost the offer: claims wait until it is rebuilt from the orders."""

    code = "offer_paused"


class ProductOffersChanged(Conflict):
    """Another offer of the same product was launched meanwhile: its stock must be checked again."""

    code = "product_offers_changed"


class LaunchKeyTaken(Conflict):
    """An offer was launched under this idempotency key already (a launch sent twice at once)."""

    code = "launch_key_taken"


class LaunchWithdrawn(Conflict):
    """The launch's offer ended before the launch could count it against its product's stock:
    housekeeping took the launch for a dead one, or the room's end stopped it."""

    code = "offer_withdrawn"
