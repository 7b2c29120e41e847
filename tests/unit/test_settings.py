"""Settings read as the servers they configure read them: what is checked here is what runs."""

from __future__ import annotations

import pytest
import uvicorn
from pydantic import SecretStr, ValidationError

from server.settings import Settings, UnsafeConfiguration

_PROD = {"env": "prod", "redis_url": "redis://h/0", "mongodb_url": "mongodb://h/"}


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        (" * ", "*"),
        ("127.0.0.1/8", "127.0.0.0/8,::ffff:127.0.0.0/104"),  # uvicorn matched nothing with
        # host bits set; and a server on `::` sees an IPv4 proxy as IPv6 maps it
        ("10.0.0.1, ::1", "10.0.0.1/32,::ffff:10.0.0.1/128,::1/128"),
    ],
)
def test_trusted_proxies_are_passed_on_as_uvicorn_reads_them(given: str, passed_on: str) -> None:
    assert Settings(forwarded_allow_ips=given).forwarded_allow_ips == passed_on


@pytest.mark.parametrize("given", ["127.0.0.1,*", "*,proxy", "localhost", ""])
def test_trusted_proxies_are_addresses_or_networks_or_a_lone_star(given: str) -> None:
    with pytest.raises(ValidationError, match="or be \\* alone"):
        Settings(forwarded_allow_ips=given)


def test_unset_trusted_proxies_leave_uvicorn_its_own_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How they were set before Liveshop had a variable of its own: an upgrade keeps them."""
    monkeypatch.delenv("LIVESHOP_FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.1.2.3")
    trusted = Settings().forwarded_allow_ips
    assert uvicorn.Config(_app, forwarded_allow_ips=trusted).forwarded_allow_ips == "10.1.2.3"


async def _app(scope: object, receive: object, send: object) -> None:
    """An app for uvicorn's configuration to name."""


@pytest.mark.parametrize(
    "secret", ["changeme" * 4, "0123456789" * 4, "liveshop" * 5, "password1234567890" * 2]
)
def test_prod_refuses_a_key_that_is_a_word_repeated(secret: str) -> None:
    with pytest.raises(UnsafeConfiguration, match="LIVESHOP_SECRET"):
        Settings(**_PROD, secret=SecretStr(secret)).check_safe()  # type: ignore[arg-type]


def test_prod_takes_a_random_key() -> None:
    Settings(**_PROD, secret=SecretStr("3f9c1a7e5b2d8046c1e9a7b3d5f20c84")).check_safe()  # type: ignore[arg-type]
