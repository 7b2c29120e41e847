"""Every answer of a real server, from a product to a cancelled order, is what the API document
says it is: the document's success schema for the operation, closed (no key it does not name)."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema

from server.domain.identity import Role
from tests.integration.channels.live import Live, token
from tests.integration.channels.test_flash_offers import ADDRESS


class Checked:
    """Sends requests and checks each success against its operation's documented answer."""

    def __init__(self, live: Live, document: dict[str, Any]) -> None:
        self._live, self._document, self.checked = live, document, set[tuple[str, str]]()

    async def send(
        self,
        method: str,
        template: str,
        user: str,
        role: Role,
        body: Any = None,
        query: dict[str, str] | None = None,
        **ids: str,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token(user, role)}", "Idempotency-Key": "k-1"}
        answer = await self._live.http.request(
            method, f"/api/v1{template.format(**ids)}", json=body, params=query, headers=headers
        )
        assert answer.status_code < 300, (method, template, answer.text)
        self._check(method.lower(), template, answer)
        return dict(answer.json())

    def _check(self, method: str, template: str, answer: httpx.Response) -> None:
        operation = self._document["paths"][template][method]
        documented = operation["responses"][str(answer.status_code)]
        schema = documented["content"]["application/json"]["schema"]
        root = {**schema, "components": self._document["components"]}
        jsonschema.Draft202012Validator(root).validate(answer.json())
        for name, header in documented.get("headers", {}).items():  # every request has a key
            assert name in answer.headers, (method, template, name)
            jsonschema.Draft202012Validator(header["schema"]).validate(answer.headers[name])
        self.checked.add((method, template))


async def test_every_answer_is_as_the_api_document_says(live: Live) -> None:
    document = (await live.http.get("/api/v1/openapi.json")).json()
    api = Checked(live, document)
    host, shopper, admin = ("host-1", Role.HOST), ("leo", Role.SHOPPER), ("root", Role.ADMIN)
    product_body = {
        "title": "Silk scarf",
        "price": {"amount": "24.90", "currency": "USD"},
        "stock": 100,
        "origin_country": "PT",
        "other_prices": [{"amount": "23.00", "currency": "EUR"}],
    }
    product = await api.send("POST", "/products", *host, product_body)
    ids = {"product_id": product["id"], "room_id": live.room_id}
    await api.send("GET", "/products/{product_id}", *shopper, **ids)
    await api.send("PATCH", "/products/{product_id}", *host, {"stock": 90}, **ids)
    room = await api.send("POST", "/rooms", *host, {"title": "Later", "blocked_words": ["spam"]})
    await api.send("GET", "/rooms", *shopper)
    await api.send("GET", "/rooms/{room_id}", *shopper, **ids)
    await api.send("POST", "/rooms/{room_id}/showcase", *host, {"product_id": product["id"]}, **ids)
    await api.send("POST", "/rooms/{room_id}/slow-mode", *host, {"seconds": 0}, **ids)
    await api.send("PUT", "/rooms/{room_id}/blocked-words", *host, {"words": ["spam"]}, **ids)
    await api.send("GET", "/rooms/{room_id}", *host, **ids)  # with its settings
    terms = {"product_id": product["id"], "price": {"amount": "9.90", "currency": "USD"}}
    offer = await api.send(
        "POST", "/rooms/{room_id}/offers", *host, {**terms, "quantity": 5}, **ids
    )
    ids["offer_id"] = offer["id"]
    await api.send("GET", "/offers/{offer_id}", *shopper, **ids)
    await api.send("GET", "/rooms/{room_id}/offers", *shopper, **ids)
    claim = {"quantity": 1, "shipping_address": {**ADDRESS, "phone": "+351912345678"}}
    order = await api.send("POST", "/offers/{offer_id}/claims", *shopper, claim, **ids)
    ids["order_id"] = order["id"]
    await api.send("GET", "/orders/{order_id}", *shopper, **ids)
    await api.send("GET", "/orders", *shopper)
    await api.send("GET", "/orders", *admin, query={"room_id": live.room_id})
    await api.send("POST", "/orders/{order_id}/cancel", *shopper, **ids)
    await api.send("GET", "/rooms/{room_id}/stats", *host, **ids)
    await api.send("POST", "/offers/{offer_id}/stop", *host, **ids)
    await api.send("POST", "/rooms/{room_id}/end", *host, **ids)
    ids["room_id"] = room["id"]
    await api.send("POST", "/rooms/{room_id}/start", *host, **ids)
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented - api.checked == set()  # every operation's answer was checked
