"""The OpenAPI document names what a client must send beyond the body: headers and queries."""

from __future__ import annotations

import re
from typing import Any

from schemas.commerce import IDEMPOTENCY_KEY
from server.http.openapi import openapi_document


def parameters(method: str, path: str) -> dict[str, dict[str, Any]]:
    operation = openapi_document()["paths"][path][method]
    return {p["name"]: p for p in operation.get("parameters", [])}


def test_claims_require_an_idempotency_key_and_launches_take_one() -> None:
    claim = parameters("post", "/offers/{offer_id}/claims")
    assert claim["Idempotency-Key"]["in"] == "header"
    assert claim["Idempotency-Key"]["required"] is True
    assert claim["offer_id"]["in"] == "path"
    assert parameters("post", "/rooms/{room_id}/offers")["Idempotency-Key"]["required"] is False


def test_the_documented_idempotency_key_is_the_one_the_server_takes() -> None:
    keys = ["k-1", "01J9ZQ4X", "a" * 100, "", "a" * 101, "launch 1", "clé", "tab\tin"]
    for path in ("/offers/{offer_id}/claims", "/rooms/{room_id}/offers"):
        # An ECMA-262 pattern, as JSON Schema's; this one reads the same in Python.
        documented = re.compile(parameters("post", path)["Idempotency-Key"]["schema"]["pattern"])
        for key in keys:
            taken = IDEMPOTENCY_KEY.fullmatch(key) is not None  # the rule of both transports
            assert (documented.search(key) is not None) == taken, (path, key)


def test_lists_document_their_queries() -> None:
    rooms = parameters("get", "/rooms")
    assert rooms["status"]["schema"]["enum"] == ["scheduled", "live", "ended"]
    assert rooms["limit"]["schema"]["maximum"] == 100
    orders = parameters("get", "/orders")
    assert set(orders) == {"room_id", "limit", "cursor"}
    assert orders["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 200,
        "default": 50,
    }
    assert "invalid_cursor" in orders["cursor"]["description"]


def test_the_order_list_documents_its_pages() -> None:
    document = openapi_document()
    answer = document["paths"]["/orders"]["get"]["responses"]["200"]
    ref = answer["content"]["application/json"]["schema"]["$ref"]
    page = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert page["required"] == ["items", "next_cursor"]
    assert page["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Order"}
    assert {"type": "null"} in page["properties"]["next_cursor"]["anyOf"]


def test_every_success_documents_its_body() -> None:
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            [success] = [
                answer for status, answer in operation["responses"].items() if status < "300"
            ]
            ref = success["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in document["components"]["schemas"], (method, path)


def test_every_operation_documents_the_backend_being_away() -> None:
    for operations in openapi_document()["paths"].values():
        for operation in operations.values():
            assert {"413", "503"} <= set(operation["responses"])
