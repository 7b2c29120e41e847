"""Behind a proxy that ends TLS: the URLs the server hands out (`Location`) say https:// when
the proxy says so, and it is one the server was told to believe."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.api import make_token, unique
from tests.e2e.conftest import Cluster
from tests.e2e.processes import LiveshopProcess, running

PRODUCT = {"title": "Serum", "price": {"amount": "20.00", "currency": "USD"}, "stock": 1}


async def _location_through(server: LiveshopProcess, proxy_address: str) -> str:
    """The `Location` of a product made through a TLS proxy at `proxy_address`."""
    transport = httpx.AsyncHTTPTransport(local_address=proxy_address)
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        created = await client.post(
            f"{server.base_url}/api/v1/products",
            json=PRODUCT,
            headers={
                "Authorization": f"Bearer {make_token(unique('host'), 'host')}",
                "X-Forwarded-Proto": "https",
                "Host": "shop.example",
            },
        )
    assert created.status_code == 201, created.text
    return created.headers["location"]


@pytest.mark.parametrize("listening_on", ["127.0.0.1", "::"])  # on `::`, as ::ffff:127.0.0.2
async def test_a_proxy_on_another_address_is_believed_once_named(
    cluster: Cluster, listening_on: str
) -> None:
    env = cluster.env(LIVESHOP_FORWARDED_ALLOW_IPS="127.0.0.2, 10.0.0.0/8")
    with running([LiveshopProcess(env, name="proxied", host=listening_on)]) as (server,):
        named = await _location_through(server, "127.0.0.2")
        other = await _location_through(server, "127.0.0.3")
    assert named.startswith("https://shop.example/api/v1/products/"), named
    assert other.startswith("http://shop.example/api/v1/products/"), other  # not believed
