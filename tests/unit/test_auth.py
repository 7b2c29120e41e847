"""Access tokens: a verified token is remembered until its expiry, and only a verified one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server import auth
from server.auth import issue_token, verify_token
from server.domain.errors import Unauthorized
from server.domain.identity import Role

SECRET = "test-only-secret-0123456789abcdef0123"  # test-only key


@pytest.fixture(autouse=True)
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [datetime.now(UTC).timestamp()]
    monkeypatch.setattr(auth, "_wall_clock", lambda: now[0])
    monkeypatch.setattr(auth, "_verified", {})
    return now


def test_a_remembered_token_still_ends_at_its_expiry(wall_clock: list[float]) -> None:
    # jwt checks `exp` against the real clock, so the token is issued relative to it.
    token = issue_token(SECRET, "u1", Role.SHOPPER, ttl_seconds=60)
    identity = verify_token(SECRET, token)
    assert identity.user_id == "u1"
    assert verify_token(SECRET, token) is identity  # remembered
    wall_clock[0] += 61
    with pytest.raises(Unauthorized) as error:
        verify_token(SECRET, token)
    assert error.value.code == "token_expired"
    assert auth._verified == {}


def test_only_verified_tokens_are_remembered() -> None:
    token = issue_token(SECRET, "u1", Role.SHOPPER)
    verify_token(SECRET, token)
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    for _ in range(2):
        with pytest.raises(Unauthorized) as error:
            verify_token(SECRET, forged)
        assert error.value.code == "invalid_token"
    # Another secret (a rotated one) does not reuse what the old one verified.
    with pytest.raises(Unauthorized):
        verify_token("another-test-only-secret-0123456789ab", token)
    assert list(auth._verified) == [(SECRET, token)]


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 3)
    tokens = [issue_token(SECRET, f"u{i}", Role.SHOPPER) for i in range(5)]
    for token in tokens:
        verify_token(SECRET, token)
    assert [token for _, token in auth._verified] == tokens[2:]


def test_a_token_checked_once_can_be_left_unremembered() -> None:
    token = issue_token(SECRET, "u1", Role.SHOPPER)
    assert verify_token(SECRET, token, remember=False).user_id == "u1"
    assert auth._verified == {}
    verify_token(SECRET, token)
    assert verify_token(SECRET, token, remember=False) is auth._verified[(SECRET, token)][0]
