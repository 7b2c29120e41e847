"""Times as Liveshop keeps them: UTC-aware, cut to the millisecond (the reservation scripts
compare epoch milliseconds and MongoDB keeps no finer, so what is stored reads back exactly as
it was written), and on the wire as ISO 8601 with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.domain.errors import InvalidInput

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_ms(moment: datetime) -> datetime:
    """The same instant in UTC, cut to the millisecond; naive times are refused."""
    if moment.tzinfo is not UTC:  # else already UTC: a claim makes several of these calls
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidInput("time must carry a timezone", code="invalid_time")
        moment = moment.astimezone(UTC)
    micros = moment.microsecond
    return moment if micros % 1000 == 0 else moment.replace(microsecond=micros - micros % 1000)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, the unit the reservation adapters compare. Integer
    arithmetic: a float timestamp times 1000 can land a millisecond short."""
    return (utc_ms(moment) - _EPOCH) // _ONE_MS


def from_epoch_ms(ms: int) -> datetime:
    return _EPOCH + ms * _ONE_MS


def whole_seconds(span: timedelta) -> int:
    return int(span.total_seconds())


def iso_z(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, to the millisecond: every time a client reads."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
