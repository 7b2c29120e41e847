"""The limits the README, websocket.md and the API document give, at the limit and one past it:
what a client may send is exactly what they say."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.commerce import OfferIn, OrderListQuery
from schemas.ws import UserMute

OFFER = {"product_id": "p_1", "price": {"amount": "9.90", "currency": "USD"}, "quantity": 5}


@pytest.mark.parametrize(
    ("model", "fields", "name", "limit"),
    [
        (OfferIn, OFFER, "per_user_limit", 1000),
        (OfferIn, OFFER, "quantity", 1_000_000),
        (OrderListQuery, {}, "limit", 200),
        (UserMute, {"type": "user.mute", "user_id": "u1"}, "duration_seconds", 7 * 24 * 3600),
    ],
)
def test_a_limit_is_taken_and_one_past_it_is_refused(
    model: type[BaseModel], fields: dict[str, Any], name: str, limit: int
) -> None:
    as_text = model is OrderListQuery  # a query's values are text
    value: Any = str(limit) if as_text else limit
    assert getattr(model.model_validate_json(json.dumps({**fields, name: value})), name) == limit
    past: Any = str(limit + 1) if as_text else limit + 1
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(json.dumps({**fields, name: past}))
    assert [error["loc"] for error in refused.value.errors()] == [(name,)]
