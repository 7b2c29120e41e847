"""Bad input of every kind at the commerce endpoints, generated: bodies with wrong types, missing
and unknown fields, odd text and numbers, bytes that are not JSON; odd idempotency keys; forged,
expired and malformed tokens. Every answer is a clear problem+json with a stable code, never a
500, and a refused request changes nothing: no product, offer or order appears, no stock moves.

In process on the memory adapters: the endpoints and their validation are the same as against
MongoDB and Redis, and hypothesis can try hundreds of requests a second."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from channels.broker_memory import MemoryBroker, MemoryBus
from server.adapters.memory import MemoryProductStore, MemoryRoomStore
from server.adapters.memory_orders import MemoryOfferStore, MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.app import Backends, create_app
from server.auth import issue_token
from server.domain.identity import Role
from server.domain.offers import most_claims
from server.domain.products import Product
from server.http.errors import PROBLEM_JSON
from server.settings import Settings

T = TypeVar("T")
SECRET = "test-secret-for-the-commerce-fuzz-suite"  # test-only key
HOST = issue_token(SECRET, "host-1", Role.HOST, ttl_seconds=3600)
HOST_HEADERS = {"Authorization": f"Bearer {HOST}"}
BUYER = issue_token(SECRET, "buyer-1", Role.SHOPPER, ttl_seconds=3600)
ADDRESS = {"name": "Ana", "line1": "Rua 1", "city": "Lisboa", "postal_code": "1000-001"}
VALID_CLAIM = {"quantity": 1, "shipping_address": {**ADDRESS, "country": "PT", "phone": None}}
VALID_PRODUCT = {
    "title": "Serum",
    "price": {"amount": "20.00", "currency": "USD"},
    "stock": 100,
    "images": ["https://cdn.example/serum.jpg"],
    "sku": "SER-1",
    "origin_country": "KR",
    "hs_code": "3304.99",
    "weight_grams": 120,
    "other_prices": [{"amount": "18.50", "currency": "EUR"}],
}
# Status codes a refused request may have; anything else (a 500 above all) is a bug.
REFUSALS = {400, 401, 403, 404, 409, 413, 422}
FIELDS = [
    *VALID_PRODUCT,
    *VALID_CLAIM,
    *ADDRESS,
    "country",
    "phone",
    "product_id",
    "per_user_limit",
    "countdown_seconds",
    "duration_seconds",
    "amount",
    "currency",
    "line2",
]

# Fullwidth and mathematical digits look like numbers and are not; a zero-width space looks
# like nothing.
ODD_TEXT = st.sampled_from(
    ["", " ", "\x00", "\u200b", "\uff11\uff12", "\U0001d7d7.\U0001d7d7\U0001d7ce", "USD",
     "usd", "XXX", "PT", "ZZ", "-1", "1e309", "9.999", "NaN", "Infinity", "0", "+351 21 000 0000",
     "<script>", "A" * 5000]
)  # fmt: skip
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=3)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | ODD_TEXT
)
JSON = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path in nested dicts: where a valid body can be broken."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (*prefix, key)
            yield from paths(inner, (*prefix, key))


def broken(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid body with one field replaced, dropped or joined by an unknown one; or any JSON."""
    where = st.sampled_from(list(paths(valid)))
    how = st.sampled_from(["replace", "drop", "unknown"])

    def apply(change: tuple[tuple[str, ...], str, Any]) -> Any:
        path, what, value = change
        body = copy.deepcopy(valid)
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        if what == "replace":
            parent[path[-1]] = value
        elif what == "drop":
            del parent[path[-1]]
        else:
            parent[f"{path[-1]}_extra"] = value
        return body

    return st.tuples(where, how, JSON).map(apply) | JSON


def encoded(body: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """The body as JSON, or one time in four bytes that are not JSON (or not even UTF-8)."""
    as_json = body.map(lambda value: json.dumps(value, ensure_ascii=False).encode())
    cut = as_json.map(lambda raw: raw[: len(raw) // 2])
    return st.one_of(
        as_json, as_json, as_json, as_json, as_json, as_json, cut, st.binary(max_size=64)
    )


# Claims for 0 to 4 units of an offer that allows 3 per buyer: the limit, from both sides.
PER_USER_LIMIT = 3
CLAIM_QUANTITIES = st.integers(0, 4).map(lambda quantity: {**VALID_CLAIM, "quantity": quantity})
TOKENS = st.sampled_from(
    [
        BUYER,
        issue_token("some-other-secret-of-32-characters!!", "buyer-1", Role.SHOPPER),
        issue_token(SECRET, "buyer-1", Role.SHOPPER, ttl_seconds=-10),
        BUYER[:-2],
        BUYER + "x",
        "",
        "not-a-token",
        "a.b.c",
    ]
)
GOOD_KEYS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=100)
VALID_KEY = re.compile(r"[\x21-\x7e]{1,100}")  # the contract's, written out: README
KEYS = st.one_of(
    GOOD_KEYS, GOOD_KEYS, st.sampled_from(["k-1", "", " ", "x" * 101, "has space", "ключ"])
)


class CountingProducts(MemoryProductStore):
    def __init__(self) -> None:
        super().__init__()
        self.created = 0

    async def create(self, product: Product) -> None:
        await super().create(product)
        self.created += 1


@dataclass
class Shop:
    """The app on memory adapters, with a product, a live room and a running offer; its own
    event loop, kept across hypothesis examples."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    products: CountingProducts
    offers: MemoryOfferStore
    orders: MemoryOrderStore
    stock: MemoryStockReservations
    room_id: str
    product_id: str
    offer_id: str
    claims_made: int = 0  # on this offer, by the buyer (see most_claims)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def state(self) -> tuple[int, int, int, int]:
        """What a refused request must leave as it was."""

        async def read() -> tuple[int, int, int, int]:
            return (
                self.products.created,
                len(await self.offers.in_room(self.room_id, 1000)),
                len(await self.orders.list_for_room(self.room_id, 1000)),
                await self.stock.remaining(self.offer_id),
            )

        return self.run(read())

    def post(self, path: str, body: bytes, token: str, key: str | None = None) -> httpx.Response:
        # Bytes, as they may come over the wire: a key in UTF-8 is no client library's choice.
        headers = {
            b"content-type": b"application/json",
            b"authorization": b"Bearer " + token.encode(),
        }
        if key is not None:
            headers[b"idempotency-key"] = key.encode()
        return self.run(self.client.post(path, content=body, headers=headers))

    def claimed(self) -> None:
        """Count a claim the buyer made; before they have made as many as one may, the host
        stops the offer and launches another, so that later examples can claim still."""
        self.claims_made += 1
        if self.claims_made == most_claims(PER_USER_LIMIT):
            self.run(self.client.post(f"/offers/{self.offer_id}/stop", headers=HOST_HEADERS))
            self.offer_id = self.run(launch_offer(self.client, self.room_id, self.product_id))
            self.claims_made = 0


async def launch_offer(client: httpx.AsyncClient, room_id: str, product_id: str) -> str:
    offer = await client.post(
        f"/rooms/{room_id}/offers",
        json={
            "product_id": product_id,
            "price": {"amount": "9.90", "currency": "USD"},
            "quantity": 10,
            "per_user_limit": PER_USER_LIMIT,
            "duration_seconds": 3600,
        },
        headers=HOST_HEADERS,
    )
    assert offer.status_code == 201, offer.text
    return str(offer.json()["id"])


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    loop = asyncio.new_event_loop()
    products, offers, orders = CountingProducts(), MemoryOfferStore(), MemoryOrderStore()
    stock = MemoryStockReservations()
    bus = MemoryBroker(MemoryBus(100, 60))
    backends = Backends(products, MemoryRoomStore(), bus, offers, orders, stock)
    app = create_app(Settings(secret=SecretStr(SECRET)), backends=backends)
    lifespan = app.app.router.lifespan_context(app.app)
    loop.run_until_complete(lifespan.__aenter__())
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://t/api/v1")
    try:

        async def open_shop() -> tuple[str, str, str]:
            product = await client.post("/products", json=VALID_PRODUCT, headers=HOST_HEADERS)
            room = await client.post("/rooms", json={"title": "show"}, headers=HOST_HEADERS)
            room_id = room.json()["id"]
            await client.post(f"/rooms/{room_id}/start", headers=HOST_HEADERS)
            product_id = product.json()["id"]
            return room_id, product_id, await launch_offer(client, room_id, product_id)

        room_id, product_id, offer_id = loop.run_until_complete(open_shop())
        yield Shop(loop, client, products, offers, orders, stock, room_id, product_id, offer_id)
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


def assert_refused_cleanly(shop: Shop, answer: httpx.Response, before: Any) -> None:
    assert answer.status_code in REFUSALS, (answer.status_code, answer.text)
    assert answer.headers["content-type"] == PROBLEM_JSON
    problem = answer.json()
    assert problem["status"] == answer.status_code
    assert isinstance(problem["code"], str)
    assert problem["code"]
    assert shop.state() == before


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def answer_is_clear(
    shop: Shop, answer: httpx.Response, before: Any, accepted: Callable[[httpx.Response], None]
) -> None:
    if answer.status_code in (200, 201):
        accepted(answer)
    else:
        assert_refused_cleanly(shop, answer, before)


@FUZZ
@given(
    body=encoded(broken(VALID_CLAIM) | CLAIM_QUANTITIES),
    key=KEYS,
    token=st.one_of(st.just(BUYER), st.just(BUYER), TOKENS),
)
def test_claims_refuse_bad_input_clearly_and_take_nothing(
    shop: Shop, body: bytes, key: str, token: str
) -> None:
    before = shop.state()
    answer = shop.post(f"/offers/{shop.offer_id}/claims", body, token, key)

    def accepted(order: httpx.Response) -> None:
        # Only a valid claim is taken: a buyer's, with a key and an address that hold, for
        # units within the limit.
        assert token == BUYER
        assert VALID_KEY.fullmatch(key) is not None, key
        quantity = json.loads(body).get("quantity", 1)  # 1 when left out
        assert 1 <= quantity <= PER_USER_LIMIT, quantity
        assert order.status_code == 201
        if order.headers["Idempotent-Replayed"] == "true":
            assert shop.state() == before  # the same key again: the same order, nothing taken
            return
        assert order.json()["status"] == "pending_payment"
        assert order.json()["quantity"] == quantity
        assert shop.state()[2:] == (before[2] + 1, before[3] - quantity)
        # Cancelled, so that later examples find the same stock and buyer's count.
        cancel = shop.post(f"/orders/{order.json()['id']}/cancel", b"", token)
        assert cancel.status_code == 200, cancel.text
        shop.claimed()

    answer_is_clear(shop, answer, before, accepted)


@FUZZ
@given(body=encoded(broken(VALID_PRODUCT)))
def test_products_refuse_bad_input_clearly_and_create_nothing(shop: Shop, body: bytes) -> None:
    before = shop.state()
    answer = shop.post("/products", body, HOST)

    def accepted(product: httpx.Response) -> None:
        assert product.status_code == 201
        assert shop.state()[0] == before[0] + 1

    answer_is_clear(shop, answer, before, accepted)


@FUZZ
@given(data=st.data())
def test_offers_refuse_bad_input_clearly_and_launch_nothing(
    shop: Shop, data: st.DataObject
) -> None:
    valid = {
        "product_id": shop.product_id,
        "price": {"amount": "9.90", "currency": "USD"},
        "quantity": 5,
        "per_user_limit": 1,
        "countdown_seconds": 0,
        "duration_seconds": 60,
    }
    body = data.draw(encoded(broken(valid)))
    before = shop.state()
    answer = shop.post(f"/rooms/{shop.room_id}/offers", body, HOST)

    def accepted(offer: httpx.Response) -> None:
        assert offer.status_code == 201
        assert shop.state()[1] == before[1] + 1
        stopped = shop.post(f"/offers/{offer.json()['id']}/stop", b"", HOST)
        assert stopped.status_code == 200, stopped.text

    answer_is_clear(shop, answer, before, accepted)
