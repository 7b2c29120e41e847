"""One contract for every stock reservation store: in memory, and Redis (a real server).

Times are fixed and passed in, as the claim service passes its clock; the stores compare
epoch milliseconds, so the window's edges are tested to the millisecond.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from server.adapters.redis_access import RECIPE, RedisNotAllowed
from server.adapters.redis_reservations import RedisStockReservations
from server.domain.errors import InvalidInput
from server.domain.offers import AttachOutcome, ClaimOutcome
from tests.contract.stock_backends import END, MS, NOW, T0, Backend, R, open_offer


async def test_concurrent_claims_sell_exactly_the_quantity(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=100, limit=2)
    rng = random.Random(3)
    claims = [(f"buyer{rng.randrange(300)}", 2 if i % 5 == 0 else 1, f"k{i}") for i in range(1000)]
    results = await asyncio.gather(*(stock.claim("of1", b, q, k, NOW) for b, q, k in claims))

    outcomes = Counter(r.outcome for r in results)
    assert set(outcomes) <= {R.RESERVED, R.SOLD_OUT, R.LIMIT_REACHED}
    reserved = [(c, r) for c, r in zip(claims, results, strict=True) if r.outcome is R.RESERVED]
    assert sum(r.quantity for _, r in reserved) == 100
    assert len({r.reservation_id for _, r in reserved}) == len(reserved)
    by_buyer: Counter[str] = Counter()
    for (buyer, quantity, _), _result in reserved:
        by_buyer[buyer] += quantity
    assert max(by_buyer.values()) <= 2
    assert await stock.remaining("of1") == 0
    snapshot = await stock.snapshot("of1")
    assert snapshot is not None
    assert snapshot.held_by_buyer == dict(by_buyer)
    assert min(r.remaining or 0 for r in results) == 0
    assert (await stock.claim("of1", "late", 1, "late-1", NOW)).outcome is R.SOLD_OUT


async def test_concurrent_retries_of_one_key_reserve_once(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=100, limit=3)
    keys = [(f"buyer{i}", f"key{i}") for i in range(50)]
    attempts = [(b, k) for b, k in keys for _ in range(10)]
    random.Random(5).shuffle(attempts)
    results = await asyncio.gather(*(stock.claim("of1", b, 2, k, NOW) for b, k in attempts))

    by_key: dict[str, list[ClaimOutcome]] = {}
    ids: dict[str, set[str | None]] = {}
    for (_, key), result in zip(attempts, results, strict=True):
        by_key.setdefault(key, []).append(result.outcome)
        ids.setdefault(key, set()).add(result.reservation_id)
        assert result.quantity == 2
    for key, outcomes in by_key.items():
        assert sorted(outcomes) == sorted([R.RESERVED] + [R.DUPLICATE] * 9), key
        assert len(ids[key]) == 1
    assert await stock.remaining("of1") == 100 - 2 * 50


async def test_claims_arriving_together_are_answered_as_if_one_by_one(backend: Backend) -> None:
    # The Redis store sends claims made at the same moment in one script call; each must get
    # the answer it would have got alone, in the order the claims were made.
    stock = backend.stock
    await open_offer(stock, "together", quantity=5, limit=2)
    await open_offer(stock, "alone", quantity=5, limit=2)
    claims = [
        ("ana", 2, "a1"),
        ("ana", 1, "a2"),  # over the limit
        ("bo", 1, "a1"),  # another buyer's key
        ("ana", 2, "a1"),  # a retry
        ("bo", 2, "b1"),
        ("cy", 2, "c1"),  # one unit left
        ("cy", 1, "c2"),  # the last unit
        ("dee", 1, "d1"),  # sold out
        ("bo", 2, "b1"),  # a retry after the last unit
        ("eve", 0, "e1"),  # malformed: refused alone, changes nothing
    ]

    async def claim(
        offer: str, buyer: str, quantity: int, key: str
    ) -> str | tuple[ClaimOutcome, int | None, int, bool]:
        try:
            result = await stock.claim(offer, buyer, quantity, key, NOW)
        except InvalidInput as error:
            return error.code
        return (result.outcome, result.remaining, result.quantity, result.released)

    together = await asyncio.gather(*(claim("together", *c) for c in claims))
    alone = [await claim("alone", *c) for c in claims]
    assert together == alone
    assert [answer if isinstance(answer, str) else answer[0] for answer in alone] == [
        R.RESERVED,
        R.LIMIT_REACHED,
        R.KEY_REUSED,
        R.DUPLICATE,
        R.RESERVED,
        R.SOLD_OUT,
        R.RESERVED,
        R.SOLD_OUT,
        R.DUPLICATE,
        "invalid_quantity",
    ]
    attached = await asyncio.gather(
        stock.attach_order("together", "a1", "o1"),
        stock.attach_order("together", "b1", "o2"),
        stock.attach_order("together", "a1", "o_other"),  # the key already names o1
        stock.attach_order("together", "nobody", "o3"),
    )
    assert list(attached) == [
        AttachOutcome.ATTACHED,
        AttachOutcome.ATTACHED,
        AttachOutcome.UNKNOWN,
        AttachOutcome.UNKNOWN,
    ]
    retry = await stock.claim("together", "ana", 2, "a1", NOW)
    assert retry.order_id == "o1"


async def test_a_retried_claim_returns_the_same_reservation_and_order(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=2, limit=2)
    first = await stock.claim("of1", "alice", 2, "k1", NOW)
    assert (first.outcome, first.remaining, first.quantity) == (R.RESERVED, 0, 2)
    again = await stock.claim("of1", "alice", 2, "k1", NOW)
    assert (again.outcome, again.reservation_id, again.order_id) == (
        R.DUPLICATE,
        first.reservation_id,
        None,
    )
    assert await stock.attach_order("of1", "k1", "ord1") is AttachOutcome.ATTACHED
    # A retry finds its order even once the offer sold out, was stopped or has ended.
    await stock.stop("of1")
    for when in (NOW, END + timedelta(hours=1)):
        retry = await stock.claim("of1", "alice", 1, "k1", when)
        assert (retry.outcome, retry.reservation_id, retry.order_id, retry.quantity) == (
            R.DUPLICATE,
            first.reservation_id,
            "ord1",
            2,
        )
        assert not retry.released
    assert await stock.remaining("of1") == 0


async def test_another_buyer_cannot_use_a_key_that_is_taken(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock)
    await stock.claim("of1", "alice", 1, "k1", NOW)
    stolen = await stock.claim("of1", "mallory", 1, "k1", NOW)
    assert (stolen.outcome, stolen.reservation_id, stolen.order_id) == (R.KEY_REUSED, None, None)
    assert await stock.remaining("of1") == 9


async def test_claims_count_only_inside_the_window(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=10, limit=10)
    early = await stock.claim("of1", "a", 1, "early", T0 - MS)
    assert (early.outcome, early.early) == (R.NOT_ACTIVE, True)  # its countdown runs
    assert (await stock.claim("of1", "a", 1, "first", T0)).outcome is R.RESERVED
    assert (await stock.claim("of1", "a", 1, "last", END - MS)).outcome is R.RESERVED
    late = await stock.claim("of1", "a", 1, "late", END)
    assert (late.outcome, late.early) == (R.NOT_ACTIVE, False)
    assert await stock.release("of1", "first")
    assert await stock.stop("of1") == 1  # taken when stopped: reserved, not given back
    stopped = await stock.claim("of1", "a", 1, "stopped", NOW)
    assert (stopped.outcome, stopped.remaining) == (R.NOT_ACTIVE, 9)
    stopped_early = await stock.claim("of1", "a", 1, "stopped-early", T0 - MS)
    assert (stopped_early.outcome, stopped_early.early) == (R.NOT_ACTIVE, False)  # never starts
    assert await stock.remaining("of1") == 9
    assert await stock.stop("of1") == 1  # stopping again takes nothing more


async def test_over_the_limit_comes_before_too_few_left_and_sold_out_before_both(
    backend: Backend,
) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=3, limit=2)
    # Asking for more than is left and more than the limit: claiming fewer units would not
    # help, so the answer is the limit.
    assert (await stock.claim("of1", "alice", 4, "a1", NOW)).outcome is R.LIMIT_REACHED
    assert (await stock.claim("of1", "alice", 2, "a2", NOW)).outcome is R.RESERVED
    over = await stock.claim("of1", "alice", 2, "a3", NOW)  # 1 left, and over her limit
    assert (over.outcome, over.remaining) == (R.LIMIT_REACHED, 1)
    fewer = await stock.claim("of1", "bob", 2, "b1", NOW)  # within his limit: fewer help
    assert (fewer.outcome, fewer.remaining) == (R.SOLD_OUT, 1)
    assert (await stock.claim("of1", "bob", 1, "b2", NOW)).outcome is R.RESERVED
    gone = await stock.claim("of1", "alice", 1, "a4", NOW)  # nothing left: sold out, for all
    assert (gone.outcome, gone.remaining) == (R.SOLD_OUT, 0)


async def test_the_per_user_limit_counts_units_and_sold_out_comes_first(
    backend: Backend,
) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=4, limit=3)
    assert (await stock.claim("of1", "alice", 2, "a1", NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "alice", 2, "a2", NOW)).outcome is R.LIMIT_REACHED
    assert (await stock.claim("of1", "alice", 1, "a3", NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "bob", 1, "b1", NOW)).outcome is R.RESERVED
    assert (await stock.claim("of1", "alice", 1, "a4", NOW)).outcome is R.SOLD_OUT
    partial = await stock.claim("of1", "carol", 1, "c0", NOW)
    assert (partial.outcome, partial.remaining) == (R.SOLD_OUT, 0)


async def test_release_returns_stock_and_the_limit_exactly_once(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=5, limit=2)
    await stock.claim("of1", "alice", 2, "k1", NOW)
    assert (await stock.claim("of1", "alice", 1, "k2", NOW)).outcome is R.LIMIT_REACHED
    released = await asyncio.gather(*(stock.release("of1", "k1") for _ in range(20)))
    assert released.count(True) == 1
    assert await stock.remaining("of1") == 5
    assert not await stock.release("of1", "k1")
    assert not await stock.release("of1", "never-claimed")
    # The key is spent: a retry answers with the released reservation and takes nothing.
    retry = await stock.claim("of1", "alice", 2, "k1", NOW)
    assert (retry.outcome, retry.released) == (R.DUPLICATE, True)
    assert await stock.remaining("of1") == 5
    # The buyer's count went down too: they may claim again with a new key.
    assert (await stock.claim("of1", "alice", 2, "k2", NOW)).outcome is R.RESERVED
    snapshot = await stock.snapshot("of1")
    assert snapshot is not None
    assert (snapshot.remaining, snapshot.held_by_buyer) == (3, {"alice": 2})


async def test_a_key_is_known_once_it_reserved_released_or_not(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=1, limit=1)
    assert not await stock.knows_claim("of1", "k1")
    await stock.claim("of1", "alice", 1, "k1", NOW)
    assert (await stock.claim("of1", "bob", 1, "k2", NOW)).outcome is R.SOLD_OUT
    assert await stock.knows_claim("of1", "k1")
    assert not await stock.knows_claim("of1", "k2")  # refused: nothing kept
    await stock.release("of1", "k1")
    assert await stock.knows_claim("of1", "k1")  # a retry still gets its answer
    assert not await stock.knows_claim("missing", "k1")


async def test_attach_order_says_whether_the_order_holds_stock(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock)
    for key in ("k1", "k2"):
        await stock.claim("of1", "alice", 1, key, NOW)
    assert await stock.attach_order("of1", "k1", "ord1") is AttachOutcome.ATTACHED
    assert await stock.attach_order("of1", "k1", "ord1") is AttachOutcome.ATTACHED
    assert await stock.attach_order("of1", "k1", "other") is AttachOutcome.UNKNOWN
    assert await stock.release("of1", "k2")
    assert await stock.attach_order("of1", "k2", "ord2") is AttachOutcome.RELEASED
    assert await stock.attach_order("of1", "nope", "ord3") is AttachOutcome.UNKNOWN
    await backend.lose_everything()
    assert await stock.attach_order("of1", "k1", "ord1") is AttachOutcome.PAUSED


async def test_a_release_for_an_order_names_it_in_the_same_step(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock)
    for key in ("k1", "k2"):
        await stock.claim("of1", "alice", 1, key, NOW)
    await stock.attach_order("of1", "k2", "ord2")
    assert await stock.release("of1", "k1", for_order="ord1")
    assert not await stock.release("of1", "k1", for_order="other")
    assert await stock.release("of1", "k2", for_order="other")  # a named order stays named
    for key, order_id in (("k1", "ord1"), ("k2", "ord2")):
        retried = await stock.claim("of1", "alice", 1, key, NOW)
        assert (retried.outcome, retried.order_id, retried.released) == (
            R.DUPLICATE,
            order_id,
            True,
        )
    assert await stock.pending_without_order("of1", END) == []
    assert await stock.remaining("of1") == 10


async def test_the_reaper_finds_and_frees_reservations_without_an_order(
    backend: Backend,
) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=10, limit=5)
    for i, key in enumerate(("old1", "old2", "old3", "new")):
        await stock.claim("of1", f"b{i}", 1, key, NOW + i * timedelta(seconds=10))
    await stock.attach_order("of1", "old2", "ord2")
    await stock.release("of1", "old3")
    pending = await stock.pending_without_order("of1", NOW + timedelta(seconds=30))
    assert [(p.idempotency_key, p.buyer_id, p.quantity) for p in pending] == [("old1", "b0", 1)]
    assert pending[0].created_at == NOW
    assert pending[0].reservation_id.startswith("rsv_")
    # The reaper frees only what still has no order, even if one arrived since it looked.
    assert not await stock.release("of1", "old2", orphan_only=True)
    assert await stock.release("of1", "old1", orphan_only=True)
    later = await stock.pending_without_order("of1", END)
    assert [(p.idempotency_key, p.created_at) for p in later] == [
        ("new", NOW + timedelta(seconds=30))
    ]
    assert await stock.remaining("of1") == 8
    assert await stock.pending_without_order("missing", END) == []


async def test_a_claim_sent_again_before_its_order_starts_the_reapers_wait_again(
    backend: Backend,
) -> None:
    """Its order unwritten (MongoDB away), the buyer keeps sending the claim: they are alive,
    and their units were given back 30 s after the first try, under their retries."""
    stock = backend.stock
    await open_offer(stock, quantity=10, limit=5)
    await stock.claim("of1", "b1", 1, "retried", NOW)
    await stock.claim("of1", "b2", 1, "left", NOW + timedelta(seconds=1))
    await stock.claim("of1", "b3", 1, "attached", NOW + timedelta(seconds=2))
    await stock.attach_order("of1", "attached", "ord3")
    for seconds in (10, 25):
        retry = await stock.claim("of1", "b1", 1, "retried", NOW + timedelta(seconds=seconds))
        assert retry.outcome is ClaimOutcome.DUPLICATE
    await stock.claim("of1", "b3", 1, "attached", NOW + timedelta(seconds=26))
    await stock.claim("of1", "b2", 2, "left", NOW + timedelta(seconds=26))  # other terms: refused
    # The reaper asks for what was last tried 30 s before it looks: at 32 s, then at 56 s.
    due = await stock.pending_without_order("of1", NOW + timedelta(seconds=2))
    assert [p.idempotency_key for p in due] == ["left"]
    due = await stock.pending_without_order("of1", NOW + timedelta(seconds=26))
    assert [(p.idempotency_key, p.created_at) for p in due] == [
        ("left", NOW + timedelta(seconds=1)),
        ("retried", NOW),  # made then; waited for from its last try
    ]


async def test_opening_twice_keeps_the_stock(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=3)
    await stock.claim("of1", "alice", 1, "k1", NOW)
    reopened = await stock.open_offer(
        "of1", quantity=3, per_user_limit=2, starts_at=T0, ends_at=END
    )
    assert not reopened
    assert await stock.remaining("of1") == 2


async def test_malformed_input_changes_nothing(backend: Backend) -> None:
    stock = backend.stock
    await open_offer(stock, quantity=3)
    for quantity in (0, -5):
        with pytest.raises(InvalidInput):
            await stock.claim("of1", "alice", quantity, "k1", NOW)
    with pytest.raises(InvalidInput):
        await stock.open_offer("of2", quantity=3, per_user_limit=4, starts_at=T0, ends_at=END)
    assert not await stock.is_ready("of2")
    assert await stock.remaining("of1") == 3


@pytest.mark.redis
async def test_redis_claims_arriving_together_share_one_script_call(clean_redis: str) -> None:
    stock = RedisStockReservations(clean_redis)
    admin = aioredis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        await open_offer(stock, quantity=100, limit=1)
        # Load both scripts into Redis first, so only the calls under test are counted.
        await stock.claim("unknown", "b", 1, "k", NOW)
        await stock.attach_order("unknown", "k", "o")
        await admin.config_resetstat()
        results = await asyncio.gather(
            *(stock.claim("of1", f"b{i}", 1, f"k{i}", NOW) for i in range(200))
        )
        assert Counter(r.outcome for r in results) == {R.RESERVED: 100, R.SOLD_OUT: 100}
        assert [r.remaining for r in results[:100]] == list(range(99, -1, -1))
        calls = await admin.info("commandstats")
        assert calls["cmdstat_evalsha"]["calls"] == 1
        attached = await asyncio.gather(
            *(stock.attach_order("of1", f"k{i}", f"o{i}") for i in range(100))
        )
        assert set(attached) == {AttachOutcome.ATTACHED}
        calls = await admin.info("commandstats")
        assert calls["cmdstat_evalsha"]["calls"] == 2
    finally:
        await stock.close()
        await admin.aclose()


@pytest.mark.redis
async def test_redis_reservation_ids_are_unique_across_processes(clean_redis: str) -> None:
    # Two stores on one Redis, as two server processes are: their ids never meet.
    stores = [RedisStockReservations(clean_redis) for _ in range(2)]
    try:
        await open_offer(stores[0], quantity=100, limit=1)
        results = await asyncio.gather(
            *(stores[i % 2].claim("of1", f"b{i}", 1, f"k{i}", NOW) for i in range(100))
        )
        assert {r.outcome for r in results} == {R.RESERVED}
        ids = [r.reservation_id for r in results]
        assert all(i is not None and i.startswith("rsv_") for i in ids)
        assert len(set(ids)) == 100
    finally:
        for store in stores:
            await store.close()


async def test_a_redis_user_that_may_not_run_the_scripts_is_found_at_start_up(
    clean_redis: str,
) -> None:
    admin = aioredis.Redis.from_url(clean_redis)
    user = f"liveshop-{random.randrange(10**9)}"
    # A common least-privilege user: everything but what ACLs call dangerous (INFO among it).
    await admin.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@dangerous"],
    )
    locked = RedisStockReservations(clean_redis.replace("redis://", f"redis://{user}:pw@", 1))
    allowed = RedisStockReservations(clean_redis)
    try:
        with pytest.raises(RedisNotAllowed, match=r"\+info"):
            await locked.check_scripts_allowed()
        await allowed.check_scripts_allowed()
        assert not await admin.exists("liveshop:{offer:liveshop-start-up-check}:state")
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()
        await locked.close()
        await allowed.close()


@pytest.mark.parametrize(
    ("rights", "refused"),
    [
        # The README's first recipe: no TIME or PING, no MULTI, and no channels (Redis 7 and
        # Valkey give a new user none): every launch, room event and history read failed.
        ("~* +@read +@write +@pubsub +@scripting +info", "EXEC, MULTI, PING, PUBLISH, SUBSCRIBE"),
        (RECIPE.replace("&liveshop:* ", ""), "(PUBLISH, SUBSCRIBE)"),
        (RECIPE.replace("~liveshop:* ", "~other:* "), "DEL, EVALSHA, EXISTS"),
        # Rooms' and users' channels, not a process's own (subscribed at start-up).
        (RECIPE.replace("&liveshop:*", "&liveshop:room:* &liveshop:user:*"), "(SUBSCRIBE)"),
        (RECIPE, None),
    ],
)
async def test_a_redis_user_short_of_a_right_is_found_at_start_up(
    clean_redis: str, rights: str, refused: str | None
) -> None:
    admin = aioredis.Redis.from_url(clean_redis)
    user = f"liveshop-{random.randrange(10**9)}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">pw", *rights.split())  # type: ignore[no-untyped-call]
    stock = RedisStockReservations(clean_redis.replace("redis://", f"redis://{user}:pw@", 1))
    try:
        if refused is None:
            await stock.check_scripts_allowed()
        else:
            with pytest.raises(RedisNotAllowed, match=re.escape(refused)):
                await stock.check_scripts_allowed()
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()
        await stock.close()


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lfu", "volatile-ttl"])
async def test_a_redis_that_evicts_keys_is_found_at_start_up(clean_redis: str, policy: str) -> None:
    # An offer's keys lost one at a time would go unnoticed (a buyer's count, a claim's key).
    admin = aioredis.Redis.from_url(clean_redis)
    stock = RedisStockReservations(clean_redis)
    try:
        await stock.check_keys_kept()  # Redis's default: noeviction
        await admin.config_set("maxmemory-policy", policy)
        await stock.check_keys_kept()  # with no memory limit, nothing is evicted
        await admin.config_set("maxmemory", "1gb")
        with pytest.raises(RedisNotAllowed, match="maxmemory-policy noeviction"):
            await stock.check_keys_kept()
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.aclose()
        await stock.close()
