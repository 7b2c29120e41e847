"""Every key a claim writes in Redis expires with its offer: none is kept for good."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from server.adapters.redis_reservations import RedisStockReservations
from server.domain.offers import RecoveredClaim
from tests.contract.stock_backends import NOW, open_offer


@pytest.mark.redis
async def test_a_claims_keys_expire_with_the_offer(clean_redis: str) -> None:
    """The pending set of a reservation that never got its order, above all: no reaper or
    settling may ever clear it (an offer that never settles)."""
    stock = RedisStockReservations(clean_redis)
    admin = aioredis.Redis.from_url(clean_redis)
    try:
        await open_offer(stock)
        await stock.claim("of1", "alice", 1, "k1", NOW)
        tag = "liveshop:{offer:of1}"
        state_expiry = await admin.pexpiretime(f"{tag}:state")
        assert state_expiry > 0
        for name in ("held", "claims", "pending", "claimed"):
            assert await admin.pexpiretime(f"{tag}:{name}") == state_expiry, name
    finally:
        await stock.close()
        await admin.aclose()


@pytest.mark.redis
async def test_a_key_remembered_expires_with_the_offer(clean_redis: str) -> None:
    stock = RedisStockReservations(clean_redis)
    admin = aioredis.Redis.from_url(clean_redis)
    try:
        await open_offer(stock)
        lost = RecoveredClaim("lost", "alice", 1, "ord-lost", held=False)
        assert await stock.remember_released("of1", lost)
        tag = "liveshop:{offer:of1}"
        state_expiry = await admin.pexpiretime(f"{tag}:state")
        for name in ("claims", "claimed"):
            assert await admin.pexpiretime(f"{tag}:{name}") == state_expiry, name
    finally:
        await stock.close()
        await admin.aclose()
