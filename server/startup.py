"""Start-ups that cannot go on because a backend is away, or refuses what Liveshop needs.

They end with one line saying which backend and why (`startup_refused`), not a traceback: the
operator's next step is to fix the backend or the configuration, not to read Liveshop's code.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from server.adapters.mongo.embedded import EmbeddedMongoError
from server.adapters.redis_access import RedisNotAllowed

_MONGODB = (PyMongoError, EmbeddedMongoError)
_REDIS = (RedisError, RedisNotAllowed)
STARTUP_REFUSALS = (*_MONGODB, *_REDIS)

# PyMongo's selection errors append the whole topology; the first part says what failed.
_DETAIL_CHARS = 300


def refusal_fields(exc: BaseException) -> dict[str, Any]:
    """The log fields of a refusal: neither error quotes a URL's password."""
    backend = "mongodb" if isinstance(exc, _MONGODB) else "redis"
    detail = " ".join(str(exc).split())
    if len(detail) > _DETAIL_CHARS:
        detail = detail[:_DETAIL_CHARS] + "..."
    return {"backend": backend, "error": type(exc).__name__, "detail": detail}
