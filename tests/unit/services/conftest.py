"""The `shop` fixture for the services' tests (see shop.py)."""

from __future__ import annotations

import pytest

from tests.unit.services.shop import Shop, open_shop


@pytest.fixture
async def shop() -> Shop:
    return await open_shop()
