"""Start-ups that cannot go on because a backend is away, refuses what Liveshop needs, or was
named wrongly.

They end with one line saying which backend and why (`startup_refused`), not a traceback: the
operator's next step is to fix the backend or the configuration, not to read Liveshop's code.
Any other error at start-up is a fault of Liveshop's own, and keeps its traceback.
"""

from __future__ import annotations

from typing import Any, Literal

from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.adapters.mongo.embedded import EmbeddedMongoError, UnusableDataDir
from server.adapters.redis_access import RedisNoSuchDatabase, RedisNotAllowed

# MongoDB's codes for a user it does not know, or one short of a right.
_MONGODB_REFUSALS = {13, 18}
# PyMongo's selection errors append the whole topology; the first part says what failed.
_DETAIL_CHARS = 300

Refusal = Literal["configuration", "backend"]


def refusal_of(exc: BaseException) -> Refusal | None:
    """What kind of refusal `exc` is: "configuration" for a backend's URL its client cannot
    use, a Redis database it does not have, or a data directory MongoDB's files cannot be kept
    in (exit 2, as any refused setting), "backend" for one away or refusing Liveshop (exit 3:
    a supervisor's restart may find it back), None for anything else."""
    if isinstance(exc, UnusableDataDir | RedisNoSuchDatabase):  # a data dir that is a file, say
        return "configuration"
    if isinstance(exc, ConfigurationError):  # an InvalidURI too
        # Unless DNS failed to answer for a mongodb+srv URL (PyMongo wraps dnspython's error):
        # a name that does not resolve now may resolve at the next start.
        return "backend" if exc.__cause__ is not None else "configuration"
    if isinstance(exc, EmbeddedMongoError | RedisNotAllowed | ConnectionFailure):
        return "backend"
    # redis-py's AuthenticationError (a user or password refused) is a ConnectionError.
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | NoPermissionError):
        return "backend"
    if isinstance(exc, PyMongoError) and exc.timeout:
        return "backend"
    if isinstance(exc, OperationFailure) and exc.code in _MONGODB_REFUSALS:
        return "backend"
    return None


def refusal_fields(exc: BaseException) -> dict[str, Any]:
    """The log fields of a refusal: none of these errors quotes a URL's password."""
    mongodb = isinstance(exc, PyMongoError | EmbeddedMongoError)
    detail = " ".join(str(exc).split())
    if len(detail) > _DETAIL_CHARS:
        detail = detail[:_DETAIL_CHARS] + "..."
    return {
        "backend": "mongodb" if mongodb else "redis",
        "error": type(exc).__name__,
        "detail": detail,
    }
