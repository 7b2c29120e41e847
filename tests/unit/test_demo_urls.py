"""The demo prints URLs a browser on the same machine can open, whatever it listens on."""

from __future__ import annotations

import pytest

from server.demo import local_url
from server.settings import Settings


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("localhost", "http://localhost:8000"),
        ("::1", "http://[::1]:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("::", "http://[::1]:8000"),
    ],
)
def test_the_url_printed_for_each_address_opens(host: str, url: str) -> None:
    assert local_url(host, 8000) == url


def test_a_public_url_is_kept_as_the_demo_builds_on_it() -> None:
    """Paths go after it, and its websocket URLs replace its "http" with "ws"."""
    assert (
        Settings(public_url="HTTPS://Shop.Example/live/").public_url == "https://Shop.Example/live"
    )
