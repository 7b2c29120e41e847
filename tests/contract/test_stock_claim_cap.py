"""How many claims one buyer may make on an offer (most_claims): a claim-and-cancel loop stops
there, in every stock reservation store, and a rebuild counts each order as a claim."""

from __future__ import annotations

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
    claims = [RecoveredClaim(f"a{i}", "ana", 1, f"ord{i}", held=False) for i in range(made)]
    claims.append(RecoveredClaim("b0", "bo", 1, "ordb", held=True))
    assert await rebuild_offer(stock, quantity=10, limit=2, claims=claims)
    unconfirmed = await stock.unconfirmed("of1")
    assert unconfirmed is not None
    await stock.confirm_open("of1", unconfirmed.token)

    assert (await stock.claim("of1", "ana", 1, "a-last", NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "ana", 1, "a-more", NOW)).outcome is R.CLAIMS_SPENT
    assert (await stock.claim("of1", "bo", 1, "b1", NOW)).outcome is R.RESERVED
    assert await stock.remaining("of1") == 10 - 3
