"""Flash offers end to end on one real server: launch, claims over HTTP and the websocket,
stock and end events, orders, on real Redis and MongoDB."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from pymongo import AsyncMongoClient

from channels import room_counters
from channels.close_codes import CloseCode
from server.adapters.mongo.orders import MongoOrderStore
from server.domain.identity import Role
from server.domain.orders import OrderStatus
from tests.integration.channels.live import (
    Live,
    close_code,
    frames_within,
    recv,
    recv_type,
    token,
)

ADDRESS = {
    "name": "Ana",
    "line1": "Rua 1",
    "city": "Lisboa",
    "postal_code": "1000-001",
    "country": "PT",
}


async def launch(live: Live, quantity: int = 3, limit: int = 2, **extra: Any) -> dict[str, Any]:
    product = await live.host(
        "POST",
        "/products",
        {"title": "Serum", "price": {"amount": "24.90", "currency": "USD"}, "stock": 100},
    )
    assert product.status_code == 201, product.text
    body = {
        "product_id": product.json()["id"],
        "price": {"amount": "9.90", "currency": "USD"},
        "quantity": quantity,
        "per_user_limit": limit,
        **extra,
    }
    offer = await live.host("POST", f"/rooms/{live.room_id}/offers", body)
    assert offer.status_code == 201, offer.text
    return dict(offer.json())


async def claim(live: Live, offer_id: str, user: str, key: str, quantity: int = 1) -> Any:
    return await live.http.post(
        f"/api/v1/offers/{offer_id}/claims",
        json={"quantity": quantity, "shipping_address": ADDRESS},
        headers={"Authorization": f"Bearer {token(user)}", "Idempotency-Key": key},
    )


async def test_claims_over_http_are_idempotent_and_never_oversell(live: Live) -> None:
    offer = await launch(live, quantity=5, limit=1)
    first = await claim(live, offer["id"], "leo", "k-1")
    assert first.status_code == 201, first.text
    again = await claim(live, offer["id"], "leo", "k-1")
    assert (again.status_code, again.json()["id"]) == (201, first.json()["id"])
    assert again.headers["Idempotent-Replayed"] == "true"
    order_url = first.headers["Location"]
    assert order_url == f"{live.base}/api/v1/orders/{first.json()['id']}"
    assert again.headers["Location"] == order_url
    read = await live.http.get(order_url, headers={"Authorization": f"Bearer {token('leo')}"})
    assert read.json()["id"] == first.json()["id"]
    limit = await claim(live, offer["id"], "leo", "k-2")
    assert (limit.status_code, limit.json()["code"]) == (409, "limit_reached")
    answers = await asyncio.gather(*(claim(live, offer["id"], f"u{n}", "k") for n in range(20)))
    assert sorted(a.status_code for a in answers).count(201) == 4
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"sold_out"}
    state = (await live.http.get(f"/api/v1/offers/{offer['id']}")).json()
    assert state["remaining"] == 0
    order = first.json()
    assert order["status"] == "pending_payment"
    assert order["total"] == {"amount": "9.90", "currency": "USD"}
    assert order["shipping_address"]["country"] == "PT"


async def test_bad_claims_get_clear_errors(live: Live) -> None:
    offer = await launch(live)
    no_key = await live.http.post(
        f"/api/v1/offers/{offer['id']}/claims",
        json={"quantity": 1, "shipping_address": ADDRESS},
        headers={"Authorization": f"Bearer {token('leo')}"},
    )
    assert (no_key.status_code, no_key.json()["code"]) == (422, "invalid_idempotency_key")
    float_quantity = await live.http.post(
        f"/api/v1/offers/{offer['id']}/claims",
        json={"quantity": 1.0, "shipping_address": ADDRESS},
        headers={"Authorization": f"Bearer {token('leo')}", "Idempotency-Key": "x"},
    )
    assert float_quantity.status_code == 422
    unknown = await claim(live, "f_nope", "leo", "k")
    assert unknown.status_code == 404
    anonymous = await live.http.post(f"/api/v1/offers/{offer['id']}/claims", json={})
    assert anonymous.status_code == 401


async def test_the_room_sees_the_offer_start_its_stock_fall_and_its_end(live: Live) -> None:
    async with websockets.connect(live.url("leo")) as leo, websockets.connect(live.url()) as anon:
        await recv(leo)
        await recv(anon)
        offer = await launch(live, quantity=2, limit=2)
        started = await recv_type(anon, "offer.started")
        assert started["offer"]["id"] == offer["id"]
        # The product as a pinned one shows it, the same to every viewer: the whole product
        # (its description, its trade fields) is GET /products/{id}'s.
        assert started["product"] == {
            "id": offer["product_id"],
            "title": "Serum",
            "images": [],
            "price": {"amount": "24.90", "currency": "USD"},
            "stock": 100,
        }
        assert started["offer"]["remaining"] == 2
        claim = {
            "type": "offer.claim",
            "offer_id": offer["id"],
            "quantity": 2,
            "idempotency_key": "ws-1",
            "shipping_address": ADDRESS,
        }
        await leo.send(json.dumps(claim))
        update = await recv_type(leo, "order.updated")
        assert update["order"]["status"] == "pending_payment"
        assert update["order"]["quantity"] == 2
        await leo.send(json.dumps(claim))  # the same claim again
        retried = await recv_type(leo, "order.updated")  # the same order, no more stock
        assert retried["order"]["id"] == update["order"]["id"]
        stock = await recv_type(anon, "offer.stock")
        assert stock["remaining"] == 0
        ended = await recv_type(anon, "offer.ended")
        assert (ended["offer_id"], ended["reason"]) == (offer["id"], "sold_out")
        await leo.send(
            json.dumps(
                {
                    "type": "offer.claim",
                    "offer_id": offer["id"],
                    "idempotency_key": "ws-2",
                    "shipping_address": ADDRESS,
                }
            )
        )
        refused = await recv_type(leo, "error")
        assert (refused["code"], refused["ref"]) in {
            ("offer_not_active", "ws-2"),
            ("sold_out", "ws-2"),
        }
        await leo.send(json.dumps({**claim, "idempotency_key": "ws-3", "ref": "mine"}))
        refused = await recv_type(leo, "error")  # the client's own ref, when it gives one
        assert refused["ref"] == "mine"


async def test_hello_lists_running_offers_with_their_stock(live: Live) -> None:
    offer = await launch(live, quantity=4)
    await claim(live, offer["id"], "leo", "k")
    async with websockets.connect(live.url("mia")) as ws:
        hello = await recv(ws)
    offers = hello["room"]["offers"]
    assert [(o["id"], o["remaining"]) for o in offers] == [(offer["id"], 3)]


async def test_the_host_stops_an_offer_and_orders_are_listed(live: Live) -> None:
    offer = await launch(live)
    order = (await claim(live, offer["id"], "leo", "k")).json()
    stopped = await live.host("POST", f"/offers/{offer['id']}/stop")
    assert stopped.json()["end_reason"] == "stopped"
    late = await claim(live, offer["id"], "mia", "k")
    assert late.json()["code"] == "offer_not_active"
    mine = await live.http.get(
        "/api/v1/orders", headers={"Authorization": f"Bearer {token('leo')}"}
    )
    assert mine.json() == {"items": [order], "next_cursor": None}
    hosts = await live.host("GET", f"/orders?room_id={live.room_id}")
    assert [o["id"] for o in hosts.json()["items"]] == [order["id"]]
    stranger = await live.http.get(
        f"/api/v1/orders/{order['id']}", headers={"Authorization": f"Bearer {token('eve')}"}
    )
    assert stranger.status_code == 404
    cancel = await live.http.post(
        f"/api/v1/orders/{order['id']}/cancel", headers={"Authorization": f"Bearer {token('leo')}"}
    )
    assert cancel.json()["status"] == "cancelled"
    assert [h["to"] for h in cancel.json()["history"]] == ["pending_payment", "cancelled"]


async def list_orders(live: Live, user: str, role: Role = Role.SHOPPER, **query: Any) -> Any:
    return await live.http.get(
        "/api/v1/orders", params=query, headers={"Authorization": f"Bearer {token(user, role)}"}
    )


async def all_pages(live: Live, user: str, role: Role, **query: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        answer = await list_orders(live, user, role, **query)
        assert answer.status_code == 200, answer.text
        pages.append([o["id"] for o in answer.json()["items"]])
        if answer.json()["next_cursor"] is None:
            return pages
        assert len(pages) < 20, "the pages never end"
        query["cursor"] = answer.json()["next_cursor"]


async def test_orders_are_listed_in_pages_for_their_buyer_and_the_rooms_host(live: Live) -> None:
    offer = await launch(live, quantity=10, limit=5)
    claims = [await claim(live, offer["id"], "leo", f"k-{i}") for i in range(5)]
    claims.append(await claim(live, offer["id"], "mia", "k-0"))
    assert [c.status_code for c in claims] == [201] * 6, [c.text for c in claims]
    stored = [c.json() for c in claims]
    newest_first = [o["id"] for o in sorted(stored, key=lambda o: (o["created_at"], o["id"]))][::-1]
    leos = [i for i in newest_first if i != stored[-1]["id"]]

    assert await all_pages(live, "leo", Role.SHOPPER, limit=2) == [leos[:2], leos[2:4], leos[4:]]
    assert await all_pages(live, "leo", Role.SHOPPER, limit=5) == [leos]
    hosts = await all_pages(live, "host-1", Role.HOST, room_id=live.room_id, limit=4)
    assert hosts == [newest_first[:4], newest_first[4:]]
    admins = await all_pages(live, "root", Role.ADMIN, room_id=live.room_id, limit=3)
    assert [i for page in admins for i in page] == newest_first

    # A page read, then a new order: the next page goes on where the first stopped.
    first = (await list_orders(live, "host-1", Role.HOST, room_id=live.room_id, limit=3)).json()
    assert (await claim(live, offer["id"], "mia", "k-1")).status_code == 201
    rest = await all_pages(
        live, "host-1", Role.HOST, room_id=live.room_id, limit=3, cursor=first["next_cursor"]
    )
    assert rest == [newest_first[3:]]


async def test_listing_a_rooms_orders_is_for_its_host(live: Live) -> None:
    offer = await launch(live)
    assert (await claim(live, offer["id"], "leo", "k")).status_code == 201
    for user, role in [("host-2", Role.HOST), ("leo", Role.SHOPPER)]:
        refused = await list_orders(live, user, role, room_id=live.room_id)
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "forbidden"
        assert refused.json()["detail"] == "only the room's host can list its orders"
    unknown = await list_orders(live, "host-1", Role.HOST, room_id="r_unknown")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    # A web client's cache buster is not the list's business; a limit is its digits alone.
    busted = await list_orders(live, "host-1", Role.HOST, room_id=live.room_id, _="1700000000")
    assert busted.status_code == 200, busted.text
    for limit in ("1_0", "1.0", " 5"):
        refused = await list_orders(live, "host-1", Role.HOST, room_id=live.room_id, limit=limit)
        assert (refused.status_code, refused.json()["errors"][0]["field"]) == (422, "limit")


async def test_a_bad_cursor_is_refused(live: Live) -> None:
    offer = await launch(live)
    for key in ("k-1", "k-2"):
        assert (await claim(live, offer["id"], "leo", key)).status_code == 201
    cursor = (await list_orders(live, "leo", limit=1)).json()["next_cursor"]
    assert cursor is not None
    for bad in ["", "x", cursor[:-2], cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]]:
        refused = await list_orders(live, "leo", limit=1, cursor=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "invalid_cursor"


async def test_an_offer_ends_by_time_once(live: Live) -> None:
    async with websockets.connect(live.url()) as anon:
        await recv(anon)
        offer = await launch(live, duration_seconds=10)
        ended = await recv_type(anon, "offer.ended", within=15)
        assert (ended["offer_id"], ended["reason"]) == (offer["id"], "expired")
        # The next rounds of housekeeping must not end it again.
        later = await frames_within(anon, 1.5)
        assert [f for f in later if f["type"] == "offer.ended"] == []
    stored = (await live.http.get(f"/api/v1/offers/{offer['id']}")).json()
    assert stored["end_reason"] == "expired"


async def test_the_host_sees_orders_per_offer(live: Live) -> None:
    offer = await launch(live, quantity=5, limit=2)
    await claim(live, offer["id"], "leo", "k1", quantity=2)
    await claim(live, offer["id"], "mia", "k1")
    stats = (await live.host("GET", f"/rooms/{live.room_id}/stats")).json()
    assert (stats["orders"], stats["paid_orders"], stats["conversion"]) == (2, 0, "0.0000")
    assert stats["gmv"] == []  # nothing is paid before payments exist
    assert stats["offers"] == [
        {
            "offer_id": offer["id"],
            "orders": 2,
            "orders_placed": 2,
            "units": 3,
            "paid_orders": 0,
            "paid_units": 0,
            "gmv": [],
        }
    ]
    shopper = await live.http.get(
        f"/api/v1/rooms/{live.room_id}/stats", headers={"Authorization": f"Bearer {token('leo')}"}
    )
    assert shopper.status_code == 403


async def test_the_hosts_likes_and_peak_outlive_redis(
    live: Live, clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room_counters, "KEEP_COUNTERS_SECONDS", 0.1)  # not every 10 s: at once
    async with websockets.connect(live.url("leo")) as leo:
        await recv(leo)
        await leo.send(json.dumps({"type": "like", "count": 9}))
        while (await recv_type(leo, "likes"))["count"] < 9:
            pass
        await asyncio.sleep(0.5)  # kept in the tick that told the room, or the next
        redis = aioredis.from_url(clean_redis)
        try:
            await redis.flushall()  # a restart without persistence, or a day after the show
        finally:
            await redis.aclose()
        # Once the server has found the history lost (leo is sent away to reload), a joiner
        # stays: one that came before it would be sent away too.
        assert await close_code(leo) == CloseCode.RESYNC
    stats = (await live.host("GET", f"/rooms/{live.room_id}/stats")).json()
    assert (stats["likes"], stats["peak_viewers"]) == (9, 1)
    # Likes made since count on from those kept, not from 0.
    async with websockets.connect(live.url("mia")) as mia:
        await recv(mia)
        await mia.send(json.dumps({"type": "like", "count": 4}))
        while (await recv_type(mia, "likes"))["count"] < 13:
            pass
    stats = (await live.host("GET", f"/rooms/{live.room_id}/stats")).json()
    assert stats["likes"] == 13


async def test_conversion_counts_the_orders_that_were_never_paid(
    live: Live, mongodb_url: str, mongo_database_name: str
) -> None:
    offer = await launch(live, quantity=5, limit=2)
    paid = (await claim(live, offer["id"], "leo", "k1", quantity=2)).json()
    unpaid = (await claim(live, offer["id"], "mia", "k1")).json()
    # Paid as a payment connector will record it, straight in the order store.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        store = MongoOrderStore(client[mongo_database_name])
        order = await store.get(paid["id"])
        order.move(OrderStatus.PAID, at=datetime.now(UTC), by="test-payments", reason="paid")
        await store.save_move(order, expected=OrderStatus.PENDING_PAYMENT)
        await store.close()
    finally:
        await client.close()
    cancel = await live.http.post(
        f"/api/v1/orders/{unpaid['id']}/cancel", headers={"Authorization": f"Bearer {token('mia')}"}
    )
    assert cancel.status_code == 200, cancel.text
    stats = (await live.host("GET", f"/rooms/{live.room_id}/stats")).json()
    # One of the two orders placed was paid: 50 %, not 100 % of the one still standing.
    assert (stats["orders"], stats["orders_placed"], stats["paid_orders"]) == (1, 2, 1)
    assert stats["conversion"] == "0.5000"
    assert stats["gmv"] == [{"amount": "19.80", "currency": "USD"}]
    (figures,) = stats["offers"]
    assert (figures["orders"], figures["orders_placed"], figures["units"]) == (1, 2, 2)


async def test_a_launch_sent_again_with_its_key_gets_the_same_offer(live: Live) -> None:
    product = await live.host(
        "POST",
        "/products",
        {"title": "Serum", "price": {"amount": "24.90", "currency": "USD"}, "stock": 10},
    )
    body = {
        "product_id": product.json()["id"],
        "price": {"amount": "9.90", "currency": "USD"},
        "quantity": 10,
    }
    path = f"/api/v1/rooms/{live.room_id}/offers"
    headers = {"Authorization": f"Bearer {token('host-1', Role.HOST)}", "Idempotency-Key": "L1"}
    first = await live.http.post(path, json=body, headers=headers)
    again = await live.http.post(path, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json()["id"] == first.json()["id"]  # not a second offer of 10 (stock 10)
    assert [first.headers["Idempotent-Replayed"], again.headers["Idempotent-Replayed"]] == [
        "false",
        "true",
    ]
    other = await live.http.post(path, json={**body, "quantity": 5}, headers=headers)
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
    # Sent again later, it answers the offer as it is now.
    offer_id = first.json()["id"]
    claimed = await claim(live, offer_id, "shopper-1", "c1")
    assert claimed.status_code == 201, claimed.text
    later = await live.http.post(path, json=body, headers=headers)
    assert (later.json()["remaining"], later.json()["end_reason"]) == (9, None)
    # Ended, its figure stays what it had left, whatever its orders give back afterwards.
    stopped = await live.host("POST", f"/offers/{offer_id}/stop")
    assert stopped.json()["remaining"] == 9, stopped.text
    cancel = await live.http.post(
        f"/api/v1/orders/{claimed.json()['id']}/cancel",
        headers={"Authorization": f"Bearer {token('shopper-1')}"},
    )
    assert cancel.status_code == 200, cancel.text
    after = await live.http.post(path, json=body, headers=headers)
    assert (after.json()["remaining"], after.json()["end_reason"]) == (9, "stopped")
    assert (await live.http.get(f"/api/v1/offers/{offer_id}")).json()["remaining"] == 9
    bad = await live.http.post(path, json=body, headers={**headers, "Idempotency-Key": "a b"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_idempotency_key")


async def test_ending_the_room_ends_its_offers_first(live: Live) -> None:
    offer = await launch(live, quantity=3, limit=1, duration_seconds=3600)
    async with websockets.connect(live.url()) as anon:
        await recv(anon)
        ended = await live.host("POST", f"/rooms/{live.room_id}/end")
        assert ended.status_code == 200, ended.text
        frame = await recv_type(anon, "offer.ended")
        assert (frame["offer_id"], frame["reason"]) == (offer["id"], "stopped")
        await recv_type(anon, "room.ended")
    late = await claim(live, offer["id"], "leo", "k-late")
    assert (late.status_code, late.json()["code"]) == (409, "offer_not_active")
    stored = (await live.http.get(f"/api/v1/offers/{offer['id']}")).json()
    assert stored["end_reason"] == "stopped"


async def test_a_products_stock_cannot_be_set_below_what_its_offers_booked(live: Live) -> None:
    offer = await launch(live, quantity=3, limit=1)
    path = f"/products/{offer['product_id']}"
    refused = await live.host("PATCH", path, {"stock": 2})
    assert (refused.status_code, refused.json()["code"]) == (409, "stock_booked")
    assert (await live.http.get(f"/api/v1{path}")).json()["stock"] == 100
    assert (await live.host("PATCH", path, {"stock": 3})).json()["stock"] == 3


async def test_a_user_banned_from_the_room_cannot_claim_its_offers(live: Live) -> None:
    offer = await launch(live, quantity=3, limit=1)
    async with websockets.connect(live.url("host-1", Role.HOST)) as host:
        await recv(host)
        await host.send(json.dumps({"type": "user.ban", "user_id": "troll"}))
        await recv_type(host, "user.banned")
    deadline = asyncio.get_running_loop().time() + 3  # bans reach claims within a second
    for attempt in itertools.count():
        refused = await claim(live, offer["id"], "troll", f"k{attempt}")
        if refused.status_code == 403 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert (refused.status_code, refused.json()["code"]) == (403, "banned")
    assert (await claim(live, offer["id"], "leo", "k1")).status_code == 201


async def test_a_socket_whose_token_expired_cannot_claim_nor_hear_its_users_orders(
    live: Live,
) -> None:
    offer = await launch(live)
    # Tokens count whole seconds: one of 2 s is still good for at least 1 s at connect.
    async with websockets.connect(live.url(token=token("leo", ttl=2))) as leo:
        await recv(leo)
        await asyncio.sleep(2.1)
        # Leo buys on another device: the order (and its address) is not this socket's to hear.
        assert (await claim(live, offer["id"], "leo", "k-phone")).status_code == 201
        frame = {
            "type": "offer.claim",
            "offer_id": offer["id"],
            "idempotency_key": "k1",
            "shipping_address": ADDRESS,
            "ref": "c1",
        }
        await leo.send(json.dumps(frame))
        heard = []
        while (refused := await recv(leo))["type"] != "error":
            heard.append(refused["type"])
        assert "order.updated" not in heard
        assert (refused["code"], refused["ref"]) == ("token_expired", "c1")
        assert await close_code(leo) == CloseCode.UNAUTHORIZED
    assert (await live.http.get(f"/api/v1/offers/{offer['id']}")).json()["remaining"] == 2
