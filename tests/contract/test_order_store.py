"""One suite for the order store, run against memory and a real MongoDB replica set: idempotent
creation, reads, the compare-and-set on status, and figures that follow every move."""

from __future__ import annotations

import asyncio
import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from bson import Decimal128
from pymongo import AsyncMongoClient, WriteConcern, monitoring

from server.adapters.memory_orders import MemoryOrderStore
from server.adapters.mongo.orders import (
    ORDERS,
    MongoOrderStore,
    ensure_order_indexes,
)
from server.domain.errors import Conflict, InvalidInput, NotFound, Unavailable
from server.domain.figures import OfferFigures
from server.domain.money import Money
from server.domain.offers import FlashOffer
from server.domain.orders import Address, Order, OrderStatus, is_legal_history, place_order
from server.ports import OrderStore

S = OrderStatus
T0 = datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)
TTL = timedelta(minutes=15)
ADDRESS = Address(
    name="Mia Chen",
    line1="Friedrichstr. 12",
    line2="3rd floor",
    city="Berlin",
    postal_code="10117",
    country="DE",
    phone="+4930123456",
)


@dataclass
class Stores:
    orders: OrderStore
    raw: Any = None  # the Mongo database, for checks of the stored form


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        return Stores(MemoryOrderStore())
    db = request.getfixturevalue("mongo_db")  # only here, so memory runs need no MongoDB
    return Stores(MongoOrderStore(db), raw=db)


def _offer(offer_id: str = "of_1", room_id: str = "r_1", price: str = "12.50") -> FlashOffer:
    return FlashOffer(
        id=offer_id,
        room_id=room_id,
        product_id="p_1",
        host_id="host-1",
        price=Money(Decimal(price), "USD"),
        quantity=100,
        per_user_limit=5,
        starts_at=T0,
        ends_at=T0 + timedelta(minutes=5),
        created_at=T0,
    )


def _order(
    order_id: str = "o_1",
    key: str = "k_1",
    *,
    buyer: str = "u_1",
    offer: FlashOffer | None = None,
    quantity: int = 2,
    seconds: int = 0,
) -> Order:
    return place_order(
        order_id=order_id,
        idempotency_key=key,
        offer=offer or _offer(),
        buyer_id=buyer,
        product={"title": "Silk scarf", "hs_code": "611710", "price": Decimal("12.50")},
        quantity=quantity,
        address=ADDRESS,
        now=T0 + timedelta(seconds=seconds),
        reservation_id=f"res-{order_id}",
        reservation_ttl=TTL,
    )


async def _figures(store: OrderStore, offer_id: str) -> OfferFigures:
    [figures] = await store.figures_of_offers([offer_id])
    return figures


async def _move(store: OrderStore, order_id: str, to: OrderStatus, minutes: int = 1) -> Order:
    order = await store.get(order_id)
    before = order.status
    order.move(to, at=T0 + TTL + timedelta(minutes=minutes), by="system", reason="test")
    await store.save_move(order, expected=before)
    return order


async def test_order_reads_back_exactly(stores: Stores) -> None:
    order = _order()
    assert await stores.orders.create(order) == order
    got = await stores.orders.get("o_1")
    assert got == order
    assert str(got.total.amount) == "25.00"  # Decimal, trailing zero kept
    assert got.product["price"] == Decimal("12.50")
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.history[0].at.utcoffset() == timedelta(0)
    assert await stores.orders.by_key("of_1", "k_1") == order
    assert await stores.orders.by_key("of_1", "k_other") is None
    assert await stores.orders.by_key("of_other", "k_1") is None


async def test_missing_order_is_not_found(stores: Stores) -> None:
    with pytest.raises(NotFound):
        await stores.orders.get("o_missing")


async def test_create_is_idempotent_by_offer_and_key(stores: Stores) -> None:
    first = _order("o_1", "k_1")
    await stores.orders.create(first)
    retry = await stores.orders.create(_order("o_2", "k_1", quantity=1, seconds=5))
    assert retry == first
    with pytest.raises(NotFound):
        await stores.orders.get("o_2")
    # The same key on another offer is another claim.
    other = _order("o_3", "k_1", offer=_offer("of_2"))
    assert await stores.orders.create(other) == other
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=1, units=2)


async def test_concurrent_creates_with_one_key_make_one_order(stores: Stores) -> None:
    attempts = [_order(f"o_{i}", "k_same", quantity=3) for i in range(20)]
    results = await asyncio.gather(*(stores.orders.create(o) for o in attempts))
    assert len({r.id for r in results}) == 1
    assert len(await stores.orders.list_for_buyer("u_1", 100)) == 1
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=1, units=3)


async def test_concurrent_creates_all_count(stores: Stores) -> None:
    # Creates made at the same moment are written together; every one of them counts.
    orders = [_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(30)]
    await asyncio.gather(*(stores.orders.create(o) for o in orders))
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=30, units=30)


async def test_creates_arriving_together_each_get_their_own_answer(stores: Stores) -> None:
    # The Mongo store writes creates made at the same moment in one unordered insert; a taken
    # key or a taken id among them must not cost the others their orders.
    first = await stores.orders.create(_order("o_old", "k_old", buyer="u_old"))
    results = await asyncio.gather(
        stores.orders.create(_order("o_1", "k_1", buyer="u_1")),
        stores.orders.create(_order("o_retry", "k_old", buyer="u_old")),  # a retry: first stands
        stores.orders.create(_order("o_old", "k_clash", buyer="u_2")),  # the id is taken
        stores.orders.create(_order("o_2", "k_2", buyer="u_2", quantity=3)),
        stores.orders.create(_order("o_2b", "k_2", buyer="u_2", quantity=3)),  # same key again
        return_exceptions=True,
    )
    assert results[0] == _order("o_1", "k_1", buyer="u_1")
    assert results[1] == first
    assert isinstance(results[2], Conflict)
    assert results[2].code == "order_exists"
    assert results[3] == results[4] == _order("o_2", "k_2", buyer="u_2", quantity=3)
    assert await stores.orders.by_key("of_1", "k_clash") is None
    for missing in ("o_retry", "o_2b"):
        with pytest.raises(NotFound):
            await stores.orders.get(missing)
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=3, units=7)


async def test_a_retry_among_new_creates_costs_them_nothing(stores: Stores) -> None:
    first = await stores.orders.create(_order("o_old", "k_old", buyer="u_old"))
    fresh = [_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(5)]
    retry = _order("o_retry", "k_old", buyer="u_old")
    twin = _order("o_twin", "k_0", buyer="u_0", quantity=1)  # a retry of fresh[0], together
    results = await asyncio.gather(*(stores.orders.create(o) for o in [*fresh, retry, twin]))
    assert results[:5] == fresh
    assert results[5] == first
    assert results[6] == fresh[0]
    assert results[6] is not results[0]  # equal, but not one object two requests could change
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=6, units=7)


async def test_an_order_id_taken_by_another_key_is_a_conflict(stores: Stores) -> None:
    await stores.orders.create(_order("o_1", "k_1"))
    with pytest.raises(Conflict) as error:
        await stores.orders.create(_order("o_1", "k_2"))
    assert error.value.code == "order_exists"
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=1, units=2)


async def test_lists_are_scoped_and_newest_first(stores: Stores) -> None:
    room_2 = _offer("of_2", room_id="r_2")
    for i, (buyer, offer) in enumerate(
        [("u_1", None), ("u_2", None), ("u_1", room_2), ("u_1", None), ("u_2", room_2)]
    ):
        await stores.orders.create(_order(f"o_{i}", f"k_{i}", buyer=buyer, offer=offer, seconds=i))

    assert [o.id for o in await stores.orders.list_for_buyer("u_1", 10)] == ["o_3", "o_2", "o_0"]
    assert [o.id for o in await stores.orders.list_for_buyer("u_1", 2)] == ["o_3", "o_2"]
    assert [o.id for o in await stores.orders.list_for_room("r_2", 10)] == ["o_4", "o_2"]
    assert [o.id for o in await stores.orders.list_for_room("r_1", 10)] == ["o_3", "o_1", "o_0"]
    assert await stores.orders.list_for_buyer("u_nobody", 10) == []


async def test_save_move_appends_the_transition(stores: Stores) -> None:
    await stores.orders.create(_order())
    paid = await _move(stores.orders, "o_1", S.PAID)
    shipped = await _move(stores.orders, "o_1", S.FULFILLING, minutes=2)
    got = await stores.orders.get("o_1")
    assert got == shipped
    assert [(h.from_status, h.to_status) for h in got.history] == [
        (None, S.PENDING_PAYMENT),
        (S.PENDING_PAYMENT, S.PAID),
        (S.PAID, S.FULFILLING),
    ]
    assert got.history[1] == paid.history[1]
    assert is_legal_history(got.history)


async def test_save_move_is_a_compare_and_set_on_status(stores: Stores) -> None:
    await stores.orders.create(_order())
    stale = await stores.orders.get("o_1")
    await _move(stores.orders, "o_1", S.CANCELLED)

    stale.move(S.PAID, at=T0 + timedelta(minutes=1), by="system")
    with pytest.raises(Conflict) as error:
        await stores.orders.save_move(stale, expected=S.PENDING_PAYMENT)
    assert error.value.code == "order_changed"
    got = await stores.orders.get("o_1")
    assert got.status is S.CANCELLED
    assert len(got.history) == 2

    missing = _order("o_missing", "k_missing")
    missing.move(S.PAID, at=T0, by="system")
    with pytest.raises(NotFound):
        await stores.orders.save_move(missing, expected=S.PENDING_PAYMENT)


async def test_save_move_refuses_a_move_its_history_does_not_show(stores: Stores) -> None:
    await stores.orders.create(_order())
    order = await stores.orders.get("o_1")
    order.status = S.PAID  # set by hand: no transition recorded
    with pytest.raises(InvalidInput):
        await stores.orders.save_move(order, expected=S.PENDING_PAYMENT)
    assert (await stores.orders.get("o_1")).status is S.PENDING_PAYMENT


async def test_two_racing_moves_one_wins(stores: Stores) -> None:
    await stores.orders.create(_order())
    payment, expiry = await stores.orders.get("o_1"), await stores.orders.get("o_1")
    payment.move(S.PAID, at=T0 + TTL, by="u_1")
    expiry.move(S.EXPIRED, at=T0 + TTL, by="system")

    results = await asyncio.gather(
        stores.orders.save_move(payment, expected=S.PENDING_PAYMENT),
        stores.orders.save_move(expiry, expected=S.PENDING_PAYMENT),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], Conflict)
    assert errors[0].code == "order_changed"
    got = await stores.orders.get("o_1")
    assert len(got.history) == 2
    assert is_legal_history(got.history)
    figures = await _figures(stores.orders, "of_1")
    if got.status is S.PAID:
        expected = OfferFigures("of_1", 1, 2, 1, 2, {"USD": Decimal("25.00")})
    else:
        expected = OfferFigures("of_1")
    assert figures == expected


async def test_figures_follow_payment_and_refund(stores: Stores) -> None:
    await stores.orders.create(_order("o_1", "k_1", quantity=2))
    await stores.orders.create(_order("o_2", "k_2", quantity=1, buyer="u_2"))
    figures = functools.partial(_figures, stores.orders)
    assert await figures("of_1") == OfferFigures("of_1", orders=2, units=3)

    await _move(stores.orders, "o_1", S.PAID)
    assert await figures("of_1") == OfferFigures("of_1", 2, 3, 1, 2, {"USD": Decimal("25.00")})
    await _move(stores.orders, "o_2", S.PAID)
    paid_both = OfferFigures("of_1", 2, 3, 2, 3, {"USD": Decimal("37.50")})
    assert await figures("of_1") == paid_both
    await _move(stores.orders, "o_2", S.FULFILLING)  # changes no figure
    assert await figures("of_1") == paid_both

    await _move(stores.orders, "o_1", S.REFUNDED)
    after_refund = await figures("of_1")
    assert after_refund == OfferFigures("of_1", 2, 3, 1, 1, {"USD": Decimal("12.50")})
    assert str(after_refund.gmv["USD"]) == "12.50"  # exact decimal, never a float


async def test_a_currency_whose_payments_were_all_refunded_has_no_gmv(stores: Stores) -> None:
    await stores.orders.create(_order("o_1", "k_1", quantity=2))
    await _move(stores.orders, "o_1", S.PAID)
    await _move(stores.orders, "o_1", S.REFUNDED, minutes=2)
    # Still claimed (it was bought), no longer paid: no "0.00" left behind for the currency.
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=1, units=2)


async def test_figures_of_several_offers_in_one_call(stores: Stores) -> None:
    await stores.orders.create(_order("o_1", "k_1", quantity=2))
    await stores.orders.create(_order("o_2", "k_2", quantity=1, offer=_offer("of_2")))
    await _move(stores.orders, "o_2", S.PAID)
    assert await stores.orders.figures_of_offers(["of_2", "of_none", "of_1"]) == [
        OfferFigures("of_2", 1, 1, 1, 1, {"USD": Decimal("12.50")}),
        OfferFigures("of_none"),
        OfferFigures("of_1", orders=1, units=2),
    ]
    assert await stores.orders.figures_of_offers([]) == []


async def test_figures_drop_expired_and_cancelled_orders(stores: Stores) -> None:
    await stores.orders.create(_order("o_1", "k_1", quantity=2))
    await stores.orders.create(_order("o_2", "k_2", quantity=3))
    await _move(stores.orders, "o_1", S.EXPIRED)
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1", orders=1, units=3)
    await _move(stores.orders, "o_2", S.CANCELLED)
    assert await _figures(stores.orders, "of_1") == OfferFigures("of_1")
    assert await _figures(stores.orders, "of_never") == OfferFigures("of_never")


async def test_due_to_expire_oldest_first(stores: Stores) -> None:
    for i in range(4):
        await stores.orders.create(_order(f"o_{i}", f"k_{i}", seconds=10 * (3 - i)))
    await _move(stores.orders, "o_1", S.PAID)
    now = T0 + TTL + timedelta(seconds=10)

    due = await stores.orders.due_to_expire(now, 10)
    assert [o.id for o in due] == ["o_3", "o_2"]  # o_0 expires later; o_1 is paid
    assert [o.id for o in await stores.orders.due_to_expire(now, 1)] == ["o_3"]
    assert await stores.orders.due_to_expire(T0 + TTL - timedelta(milliseconds=1), 10) == []
    assert all(o.is_due_to_expire(now) for o in due)


async def test_orders_of_an_offer(stores: Stores) -> None:
    moves = {"o_0": [], "o_1": [S.PAID], "o_2": [S.CANCELLED], "o_3": [S.EXPIRED]}
    moves |= {"o_4": [S.PAID, S.REFUNDED], "o_5": [S.PAID, S.FULFILLING]}
    for i, (order_id, path) in enumerate(moves.items()):
        await stores.orders.create(_order(order_id, f"k_{i}", seconds=i))
        for to in path:
            await _move(stores.orders, order_id, to)
    await stores.orders.create(_order("o_other", "k_0", offer=_offer("of_2")))

    orders = await stores.orders.of_offer("of_1")
    assert [o.id for o in orders] == list(moves)  # oldest first, whatever their status
    assert sorted(o.id for o in orders if o.holds_stock) == ["o_0", "o_1", "o_5"]
    assert await stores.orders.of_offer("of_none") == []


async def test_mongo_stored_form(mongo_db: Any) -> None:
    await MongoOrderStore(mongo_db).create(_order())
    doc = await mongo_db[ORDERS].find_one({"_id": "o_1"})
    assert doc["total"] == {"amount": Decimal128("25.00"), "currency": "USD"}
    assert doc["shipping_address"]["country"] == "DE"
    assert doc["history"][0]["to"] == "pending_payment"
    assert doc["history"][0]["from"] is None
    assert doc["product"]["price"] == Decimal128("12.50")
    # An order is one document and nothing else: the figures are counted from the orders.
    for name in await mongo_db.list_collection_names():
        assert await mongo_db[name].count_documents({}) == (1 if name == ORDERS else 0), name


async def test_mongo_processes_writing_at_once(mongo_db: Any) -> None:
    # Two stores stand for two server processes, creating and moving orders side by side.
    stores = [MongoOrderStore(mongo_db), MongoOrderStore(mongo_db)]
    orders = [_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(160)]
    await asyncio.gather(*(stores[i % 2].create(o) for i, o in enumerate(orders)))
    await asyncio.gather(*(_move(stores[i % 3 % 2], f"o_{i}", S.PAID) for i in range(0, 160, 2)))
    for store in stores:
        assert await _figures(store, "of_1") == OfferFigures(
            "of_1", 160, 160, 80, 80, {"USD": Decimal("1000.00")}
        )


async def test_mongo_indexes(mongo_db: Any) -> None:
    await ensure_order_indexes(mongo_db)  # a second run at the next start is harmless
    info = await mongo_db[ORDERS].index_information()
    assert info["offer_idempotency_key"]["unique"] is True
    assert info["offer_idempotency_key"]["key"] == [("offer_id", 1), ("idempotency_key", 1)]
    assert info["buyer_created_at"]["key"][:2] == [("buyer_id", 1), ("created_at", -1)]
    assert info["room_created_at"]["key"][:2] == [("room_id", 1), ("created_at", -1)]
    assert info["status_expires_at"]["key"] == [("status", 1), ("reservation_expires_at", 1)]


async def test_mongo_creates_arriving_together_share_one_insert(mongo_db: Any) -> None:
    store = MongoOrderStore(mongo_db)
    await store.create(_order("o_first", "k_first"))

    async def counts() -> tuple[int, int]:
        status = await mongo_db.client.admin.command("serverStatus")
        return await _insert_commands(mongo_db), int(status["transactions"]["totalStarted"])

    inserts, transactions = await counts()
    orders = [_order(f"o_{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(150)]
    assert await asyncio.gather(*(store.create(o) for o in orders)) == orders
    assert await counts() == (inserts + 1, transactions)  # one insert, no transaction
    assert await _figures(store, "of_1") == OfferFigures("of_1", orders=151, units=152)
    await store.close()


async def test_mongo_a_document_refused_for_another_reason_fails_alone(mongo_db: Any) -> None:
    # A rule of the database's own (here an operator's validator) refuses one order of a batch:
    # its claimer hears "try again", and the others are written all the same.
    await mongo_db.command("collMod", ORDERS, validator={"quantity": {"$lt": 3}})
    store = MongoOrderStore(mongo_db)
    inserts = await _insert_commands(mongo_db)
    results = await asyncio.gather(
        store.create(_order("o_1", "k_1", buyer="u_1", quantity=1)),
        store.create(_order("o_2", "k_2", buyer="u_2", quantity=3)),
        store.create(_order("o_3", "k_3", buyer="u_3", quantity=2)),
        return_exceptions=True,
    )
    assert results[0] == _order("o_1", "k_1", buyer="u_1", quantity=1)
    assert isinstance(results[1], Unavailable)
    assert results[1].code == "order_write_failed"
    assert results[2] == _order("o_3", "k_3", buyer="u_3", quantity=2)
    assert await _insert_commands(mongo_db) == inserts + 1  # all three in one insert
    assert await store.by_key("of_1", "k_2") is None
    assert await _figures(store, "of_1") == OfferFigures("of_1", orders=2, units=3)
    await store.close()


async def _insert_commands(db: Any) -> int:
    status = await db.client.admin.command("serverStatus")
    return int(status["metrics"]["commands"]["insert"]["total"])


async def test_mongo_an_order_not_known_to_be_durable_is_not_acknowledged(mongo_db: Any) -> None:
    # A write concern the replica set cannot confirm (two members on a single node: the same
    # answer as a majority lost in a failover) must not be taken for success.
    store = MongoOrderStore(mongo_db, write_concern=WriteConcern(w=2, wtimeout=1000))
    results = await asyncio.gather(
        store.create(_order("o_1", "k_1", buyer="u_1")),
        store.create(_order("o_2", "k_2", buyer="u_2")),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, Unavailable)
        assert result.code == "order_write_failed"
    assert results[0] is not results[1]
    # The retry of the claim finds its order, if it was written after all.
    retry = MongoOrderStore(mongo_db)
    assert await retry.create(_order("o_1b", "k_1", buyer="u_1")) == _order(
        "o_1", "k_1", buyer="u_1"
    )
    await store.close()
    await retry.close()


async def test_mongo_orders_are_written_with_majority_write_concern(mongodb_url: str) -> None:
    inserts: list[dict[str, Any]] = []

    class Inserts(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "insert":
                inserts.append(dict(event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

        def failed(self, event: monitoring.CommandFailedEvent) -> None: ...

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, event_listeners=[Inserts()]
    )
    try:
        store = MongoOrderStore(client[f"wc_{uuid.uuid4().hex[:8]}"])
        await store.create(_order())
        assert [i["writeConcern"] for i in inserts] == [{"w": "majority", "wtimeout": 10000}]
        await store.close()
    finally:
        await client.close()


async def test_mongo_processes_creating_the_same_keys_at_once(mongo_db: Any) -> None:
    # Two stores stand for two server processes, each given every claim (a retry that reached
    # the other process): one order per key, and both hear of that one.
    stores = [MongoOrderStore(mongo_db), MongoOrderStore(mongo_db)]
    first = [_order(f"o_a{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(200)]
    second = [_order(f"o_b{i}", f"k_{i}", buyer=f"u_{i}", quantity=1) for i in range(200)]
    results = await asyncio.gather(
        *(stores[0].create(o) for o in first), *(stores[1].create(o) for o in second)
    )
    for i in range(200):
        assert results[i] == results[200 + i]
        assert results[i].id in (f"o_a{i}", f"o_b{i}")
    assert await mongo_db[ORDERS].count_documents({}) == 200
    for store in stores:
        await store.close()
