"""The catalog's trade fields through the product stores, memory and a real MongoDB: they read
back exactly, prices in every currency stay Decimal, and products stored before the fields
existed still load."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from bson import Decimal128

from server.adapters.memory import MemoryProductStore
from server.adapters.mongo.stores import PRODUCTS, MongoProductStore
from server.domain.errors import NotFound, ProductOffersChanged
from server.domain.money import Money
from server.domain.products import Product
from server.ports import ProductStore

T0 = datetime(2026, 5, 14, 10, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.mongo)])
def products(request: pytest.FixtureRequest) -> ProductStore:
    if request.param == "memory":
        return MemoryProductStore()
    return MongoProductStore(request.getfixturevalue("mongo_db"))


def _product(**fields: Any) -> Product:
    return Product(
        id="p_1",
        owner_id="host-1",
        title="Oolong tea",
        price=Money(Decimal("12.50"), "USD"),
        stock=40,
        created_at=T0,
        **fields,
    )


def _full() -> Product:
    """A product with every trade field set; built afresh, as a test may mutate it."""
    return _product(
        images=["https://img.example/tea.jpg"],
        description="Spring harvest, 100 g tin.\nShips in 48 h.",
        sku="TEA-OOL-100",
        origin_country="TW",
        hs_code="090230",
        weight_grams=180,
        other_prices=[Money(Decimal("11.90"), "EUR"), Money(Decimal("1800"), "JPY")],
    )


async def test_trade_fields_read_back_exactly(products: ProductStore) -> None:
    product = _full()
    await products.create(product)
    got = await products.get("p_1")
    assert got == product
    assert [str(p.amount) for p in got.other_prices] == ["11.90", "1800"]


async def test_unset_trade_fields_read_back_as_defaults(products: ProductStore) -> None:
    await products.create(_product())
    got = await products.get("p_1")
    assert got == _product()
    assert (got.sku, got.hs_code, got.weight_grams, got.other_prices) == (None, None, None, [])


async def test_stored_copy_is_not_shared(products: ProductStore) -> None:
    product = _full()
    await products.create(product)
    product.other_prices.append(Money(Decimal("9"), "GBP"))
    assert len((await products.get("p_1")).other_prices) == 2


async def test_mongo_stored_form(mongo_db: Any) -> None:
    await MongoProductStore(mongo_db).create(_full())
    doc = await mongo_db[PRODUCTS].find_one({"_id": "p_1"})
    assert doc["other_prices"] == [
        {"amount": Decimal128("11.90"), "currency": "EUR"},
        {"amount": Decimal128("1800"), "currency": "JPY"},
    ]
    assert (doc["origin_country"], doc["hs_code"], doc["weight_grams"]) == ("TW", "090230", 180)


async def _store_an_old_product(mongo_db: Any) -> None:
    """A product as the first version stored it: no trade fields, no launch count."""
    await mongo_db[PRODUCTS].insert_one(
        {
            "_id": "p_old",
            "owner_id": "host-1",
            "title": "Old listing",
            "price": {"amount": Decimal128("5.00"), "currency": "USD"},
            "stock": 3,
            "created_at": T0,
            "images": [],
        }
    )


async def test_mongo_reads_products_stored_before_the_trade_fields(mongo_db: Any) -> None:
    await _store_an_old_product(mongo_db)
    got = await MongoProductStore(mongo_db).get("p_old")
    assert (got.description, got.sku, got.origin_country, got.other_prices) == ("", None, None, [])


async def test_set_stock_changes_only_the_stock(products: ProductStore) -> None:
    await products.create(_full())
    restocked = await products.set_stock("p_1", 75, launches=0)
    assert restocked.stock == 75
    assert await products.get("p_1") == restocked
    expected = _full()
    expected.stock = 75
    assert restocked == expected
    with pytest.raises(NotFound):
        await products.set_stock("p_missing", 1, launches=0)


async def test_launches_and_stock_counts_each_see_the_other(products: ProductStore) -> None:
    """A launch counts itself only against the stock it checked; a count stores its figure
    only if no launch counted itself since the count read the bookings."""
    await products.create(_full())  # stock 40
    assert await products.count_launch("p_1", at_least=40)
    assert (await products.get("p_1")).launches == 1
    with pytest.raises(ProductOffersChanged):  # read before that launch
        await products.set_stock("p_1", 10, launches=0)
    assert (await products.get("p_1")).stock == 40
    assert (await products.set_stock("p_1", 10, launches=1)).stock == 10
    assert not await products.count_launch("p_1", at_least=40)  # needs more than the count left
    assert (await products.get("p_1")).launches == 1
    assert await products.count_launch("p_1", at_least=10)
    assert await products.count_launch("p_1", at_least=8)  # a restock still has room for it
    assert (await products.get("p_1")).launches == 3
    assert not await products.count_launch("p_missing", at_least=40)


async def test_a_product_stored_before_launches_were_counted_takes_a_count(
    mongo_db: Any,
) -> None:
    await _store_an_old_product(mongo_db)
    store = MongoProductStore(mongo_db)
    assert (await store.get("p_old")).launches == 0
    assert (await store.set_stock("p_old", 5, launches=0)).stock == 5
    assert await store.count_launch("p_old", at_least=5)
    assert (await store.get("p_old")).launches == 1
