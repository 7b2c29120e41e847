"""How many claims one buyer may make on an offer (most_claims): a claim-and-cancel loop stops
there, in every stock reservation store, and a rebuild counts each order as a claim."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from server.adapters.redis_reservations import RedisStockReservations
from server.domain.errors import Unavailable
from server.domain.offers import RecoveredClaim, most_claims
from tests.contract.stock_backends import NOW, Backend, R, open_offer, rebuild_offer


async def test_a_buyer_who_gives_back_claim_after_claim_is_stopped_at_the_most(
    backend: Backend,
) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=10, limit=1)
    for turn in range(most_claims(1)):
        assert (await stock.claim("of1", "ana", 1, f"k{turn}", NOW)).outcome is R.RESERVED
        assert await stock.release("of1", f"k{turn}", for_order=f"ord{turn}")

    refused = await stock.claim("of1", "ana", 1, "one-more", NOW)
    assert (refused.outcome, refused.remaining) == (R.CLAIMS_SPENT, 10)
    # Refused, it changed nothing: no stock taken, the key unknown.
    assert await stock.remaining("of1") == 10
    assert not await stock.knows_claim("of1", "one-more")
    snapshot = await stock.snapshot("of1")
    assert snapshot is not None
    assert snapshot.held_by_buyer == {}
    # A claim sent again still finds its own, and other buyers still buy.
    again = await stock.claim("of1", "ana", 1, "k0", NOW)
    assert (again.outcome, again.order_id, again.released) == (R.DUPLICATE, "ord0", True)
    assert (await stock.claim("of1", "bo", 1, "b1", NOW)).outcome is R.RESERVED


async def test_sold_out_and_the_limit_are_told_before_the_claims_spent(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=2, limit=1)
    for turn in range(most_claims(1) - 1):
        await stock.claim("of1", "ana", 1, f"k{turn}", NOW)
        await stock.release("of1", f"k{turn}")
    assert (await stock.claim("of1", "ana", 1, "last", NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "ana", 1, "over", NOW)).outcome is R.LIMIT_REACHED
    await stock.release("of1", "last")
    assert (await stock.claim("of1", "ana", 1, "spent", NOW)).outcome is R.CLAIMS_SPENT
    for buyer in ("bo", "cy"):
        assert (await stock.claim("of1", buyer, 1, buyer, NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "ana", 1, "spent", NOW)).outcome is R.SOLD_OUT


async def test_a_rebuild_counts_each_order_as_a_claim_of_its_buyer(backend: Backend) -> None:
    stock = backend.stock
    made = most_claims(2) - 1
    # Of 2 units each: still one claim each.
    claims = [RecoveredClaim(f"a{i}", "ana", 2, f"ord{i}", held=False) for i in range(made)]
    claims.append(RecoveredClaim("b0", "bo", 1, "ordb", held=True))
    assert await rebuild_offer(stock, quantity=10, limit=2, claims=claims)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    await stock.confirm_open("of1", unconfirmed.token)

    assert (await stock.claim("of1", "ana", 1, "a-last", NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "ana", 1, "a-more", NOW)).outcome is R.CLAIMS_SPENT
    assert (await stock.claim("of1", "bo", 1, "b1", NOW)).outcome is R.RESERVED
    assert await stock.remaining("of1") == 10 - 3


async def test_a_claim_sent_again_never_counts_whatever_became_of_it(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=10, limit=2)
    assert (await stock.claim("of1", "ana", 2, "k0", NOW)).outcome is R.RESERVED  # one claim
    for step in ("reserved", "attached", "released"):
        if step == "attached":
            await stock.attach_order("of1", "k0", "ord0")
        elif step == "released":
            await stock.release("of1", "k0")
        for _ in range(3):
            assert (await stock.claim("of1", "ana", 2, "k0", NOW)).outcome is R.DUPLICATE
    for turn in range(1, most_claims(2)):  # so the claims of 2 units each, one claim each
        assert (await stock.claim("of1", "ana", 2, f"k{turn}", NOW)).outcome is R.RESERVED
        await stock.release("of1", f"k{turn}")
    assert (await stock.claim("of1", "ana", 1, "spent", NOW)).outcome is R.CLAIMS_SPENT
    for turn in range(most_claims(2)):  # at the most, each is still answered as it was
        again = await stock.claim("of1", "ana", 2, f"k{turn}", NOW)
        assert (again.outcome, again.released) == (R.DUPLICATE, True)


async def test_refused_claims_do_not_count(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=3, limit=2)
    assert (await stock.claim("of1", "bo", 2, "b", NOW)).outcome is R.RESERVED  # 1 left
    assert (await stock.claim("of1", "ana", 1, "held", NOW)).outcome is R.RESERVED  # 0 left
    await stock.release("of1", "held")  # 1 left
    for turn in range(most_claims(2)):
        over = await stock.claim("of1", "ana", 3, f"over{turn}", NOW)
        assert over.outcome is R.LIMIT_REACHED
        fewer = await stock.claim("of1", "ana", 2, f"fewer{turn}", NOW)
        assert (fewer.outcome, fewer.remaining) == (R.SOLD_OUT, 1)  # only 1 left
    for turn in range(1, most_claims(2)):  # "held" was the first of ana's claims
        assert (await stock.claim("of1", "ana", 1, f"k{turn}", NOW)).outcome is R.RESERVED
        await stock.release("of1", f"k{turn}")
    # Spent: told before there being too few left, since claiming fewer would not help.
    assert (await stock.claim("of1", "ana", 2, "more", NOW)).outcome is R.CLAIMS_SPENT


@pytest.mark.redis
async def test_a_rebuild_after_the_state_alone_was_lost_counts_the_orders_alone(
    clean_redis: str,
) -> None:
    """An evicted state hash (or one another run of Redis wrote, dropped) leaves the count
    behind: the rebuild starts it again from the orders, and it expires with the offer."""
    stock = RedisStockReservations(clean_redis)
    admin = aioredis.Redis.from_url(clean_redis)
    tag = "liveshop:{offer:of1}"
    try:
        await open_offer(stock, quantity=10, limit=1)
        claims = []
        for turn in range(2):
            assert (await stock.claim("of1", "ana", 1, f"k{turn}", NOW)).outcome is R.RESERVED
            await stock.release("of1", f"k{turn}", for_order=f"ord{turn}")
            claims.append(RecoveredClaim(f"k{turn}", "ana", 1, f"ord{turn}", held=False))
        await admin.delete(f"{tag}:state")
        assert await rebuild_offer(stock, quantity=10, limit=1, claims=claims)
        assert await admin.pexpiretime(f"{tag}:claimed") == await admin.pexpiretime(f"{tag}:state")
        unconfirmed = await stock.unconfirmed("of1")
        assert unconfirmed is not None
        await stock.confirm_open("of1", unconfirmed.token)
        for turn in range(2, most_claims(1)):
            assert (await stock.claim("of1", "ana", 1, f"k{turn}", NOW)).outcome is R.RESERVED
            await stock.release("of1", f"k{turn}")
        assert (await stock.claim("of1", "ana", 1, "spent", NOW)).outcome is R.CLAIMS_SPENT
    finally:
        await stock.close()
        await admin.aclose()


async def test_a_key_remembered_released_names_its_order_and_holds_nothing(
    backend: Backend,
) -> None:
    """The key of an order a rebuild missed (remember_released): a claim sent again finds the
    order; the key counts as one of its buyer's claims; a known key is left as it is."""
    stock = backend.stock
    await open_offer(stock, quantity=3, limit=1)
    lost = RecoveredClaim("lost", "ana", 1, "ord-lost", held=False, reservation_id="rsv-lost")
    assert await stock.remember_released("of1", lost)
    assert not await stock.remember_released("of1", lost)  # once
    again = await stock.claim("of1", "ana", 1, "lost", NOW)
    assert (again.outcome, again.order_id, again.released) == (R.DUPLICATE, "ord-lost", True)
    assert (again.reservation_id, await stock.remaining("of1")) == ("rsv-lost", 3)
    assert (await stock.claim("of1", "bo", 1, "lost", NOW)).outcome is R.KEY_REUSED
    assert (await stock.claim("of1", "ana", 1, "k1", NOW)).outcome is R.RESERVED
    known = RecoveredClaim("k1", "ana", 1, "ord-other", held=False)
    assert not await stock.remember_released("of1", known)
    assert await stock.remaining("of1") == 2  # k1 still holds its unit
    for turn in range(2, most_claims(1)):  # "lost" and "k1" were two of ana's claims
        await stock.release("of1", f"k{turn - 1}")
        assert (await stock.claim("of1", "ana", 1, f"k{turn}", NOW)).outcome is R.RESERVED
    await stock.release("of1", f"k{most_claims(1) - 1}")
    assert (await stock.claim("of1", "ana", 1, "spent", NOW)).outcome is R.CLAIMS_SPENT
    await backend.lose_everything()
    with pytest.raises(Unavailable) as paused:
        await stock.remember_released("of1", lost)
    assert paused.value.code == "offer_paused"
