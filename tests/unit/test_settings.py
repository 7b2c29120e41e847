"""Settings read as the servers they configure read them: what is checked here is what runs."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from server.settings import Settings, UnsafeConfiguration

_PROD = {"env": "prod", "redis_url": "redis://h/0", "mongodb_url": "mongodb://h/"}


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        ("127.0.0.1,*", "*"),  # uvicorn would ignore a `*` among addresses
        (" * ", "*"),
        ("127.0.0.1/8", "127.0.0.0/8"),  # uvicorn would match nothing with host bits set
        ("10.0.0.1, ::1", "10.0.0.1/32,::1/128"),
    ],
)
def test_trusted_proxies_are_passed_on_as_uvicorn_reads_them(given: str, passed_on: str) -> None:
    assert Settings(forwarded_allow_ips=given).forwarded_allow_ips == passed_on


def test_trusted_proxies_default_to_uvicorns_own_variable_then_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.delenv("LIVESHOP_FORWARDED_ALLOW_IPS", raising=False)
    assert Settings().forwarded_allow_ips == "127.0.0.1/32,::1/128"
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.1.2.3")  # how it was set before Liveshop's
    assert Settings().forwarded_allow_ips == "10.1.2.3/32"
    monkeypatch.setenv("LIVESHOP_FORWARDED_ALLOW_IPS", "10.9.9.9")
    assert Settings().forwarded_allow_ips == "10.9.9.9/32"


@pytest.mark.parametrize("secret", ["changeme" * 4, "0123456789" * 4, "liveshop" * 5])
def test_prod_refuses_a_key_that_is_a_word_repeated(secret: str) -> None:
    with pytest.raises(UnsafeConfiguration, match="LIVESHOP_SECRET"):
        Settings(**_PROD, secret=SecretStr(secret)).check_safe()  # type: ignore[arg-type]


def test_prod_takes_a_random_key() -> None:
    Settings(**_PROD, secret=SecretStr("3f9c1a7e5b2d8046c1e9a7b3d5f20c84")).check_safe()  # type: ignore[arg-type]
