"""The OpenAPI document names what a client must send beyond the body: headers and queries."""

from __future__ import annotations

from typing import Any

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


def test_lists_document_their_queries() -> None:
    rooms = parameters("get", "/rooms")
    assert rooms["status"]["schema"]["enum"] == ["scheduled", "live", "ended"]
    assert rooms["limit"]["schema"]["maximum"] == 100
    assert set(parameters("get", "/orders")) == {"room_id", "limit"}


def test_every_operation_documents_the_backend_being_away() -> None:
    for operations in openapi_document()["paths"].values():
        for operation in operations.values():
            assert {"413", "503"} <= set(operation["responses"])
