"""Which start-up errors are a refusal told in one line, and which exit code each gets."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    ConfigurationError,
    InvalidURI,
    OperationFailure,
    ServerSelectionTimeoutError,
)
from redis.exceptions import AuthenticationError, ResponseError

from server.adapters.redis_access import RedisNotAllowed
from server.startup import refusal_of


def _dns_failure() -> ConfigurationError:
    """As PyMongo reports a mongodb+srv name DNS did not answer for: dnspython's error as the
    cause."""
    try:
        try:
            raise TimeoutError("The resolution lifetime expired after 5.000 seconds")
        except TimeoutError as exc:
            raise ConfigurationError(str(exc)) from exc
    except ConfigurationError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        (InvalidURI("mongodb+srv:// URIs must not include a port number"), "configuration"),
        (ConfigurationError("unknown option"), "configuration"),
        (_dns_failure(), "backend"),  # DNS away for now: a restart may find it
        (ServerSelectionTimeoutError("127.0.0.1:1: connection refused"), "backend"),
        (OperationFailure("Authentication failed.", code=18), "backend"),
        (AuthenticationError("invalid username-password pair"), "backend"),
        (RedisNotAllowed("Redis evicts keys"), "backend"),
        (OperationFailure("an index build conflict", code=85), None),  # keeps its traceback
        (ResponseError("ERR a script's bug"), None),
        (RuntimeError("a bug of Liveshop's own"), None),
    ],
)
def test_start_up_errors_are_told_apart(error: BaseException, refusal: str | None) -> None:
    assert refusal_of(error) == refusal
