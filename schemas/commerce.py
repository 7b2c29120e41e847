"""Wire models for flash offers, claims and orders: strict requests, public JSON out."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from schemas.http import ListQuery, MoneyIn, QueryInt, RequestModel, ResourceId, iso_utc
from server.domain.identity import client_key
from server.domain.offers import (
    MAX_CLAIM_QUANTITY,
    MAX_COUNTDOWN,
    MAX_DURATION,
    MIN_DURATION,
    FlashOffer,
    StockFigure,
)
from server.domain.orders import (
    MAX_CITY_CHARS,
    MAX_LINE_CHARS,
    MAX_NAME_CHARS,
    Address,
    Order,
)
from server.domain.times import whole_seconds

# A claim's idempotency key, the HTTP header's as the websocket frame's: printable ASCII without
# spaces, what clients put in them (UUIDs, ULIDs, ...), and echoed safely in every order.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,100}")
IDEMPOTENCY_KEY_RULE = "1-100 printable ASCII characters, without spaces"


def _idempotency_key(key: str) -> str:
    if IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise PydanticCustomError("invalid_idempotency_key", IDEMPOTENCY_KEY_RULE)
    return key


IdempotencyKey = Annotated[str, AfterValidator(_idempotency_key)]


class _Request(RequestModel):
    model_config = ConfigDict(frozen=True)


class OfferIn(_Request):
    field_codes = {
        "price": "invalid_price",
        "quantity": "invalid_quantity",
        "per_user_limit": "invalid_per_user_limit",
        "countdown_seconds": "invalid_countdown",
        "duration_seconds": "invalid_duration",
    }
    product_id: ResourceId
    price: MoneyIn
    quantity: Annotated[int, Field(ge=1, le=1_000_000)]
    per_user_limit: Annotated[int, Field(ge=1, le=1000)] = 1
    countdown_seconds: Annotated[int, Field(ge=0, le=whole_seconds(MAX_COUNTDOWN))] = 0
    duration_seconds: Annotated[
        int, Field(ge=whole_seconds(MIN_DURATION), le=whole_seconds(MAX_DURATION))
    ] = 300


class AddressIn(_Request):
    # The lengths Address allows, so that the API document says what the server takes. They
    # count the text as sent: Address counts it once squashed, never longer (squashing it here
    # first tripled the schema's cost, and every claim of a flash sale pays it).
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    line1: Annotated[str, Field(min_length=1, max_length=MAX_LINE_CHARS)]
    line2: Annotated[str, Field(max_length=MAX_LINE_CHARS)] | None = None
    city: Annotated[str, Field(min_length=1, max_length=MAX_CITY_CHARS)]
    postal_code: Annotated[str, Field(max_length=20)] = ""
    country: Annotated[str, Field(min_length=2, max_length=2)]
    phone: Annotated[str, Field(max_length=32)] | None = None

    def to_address(self) -> Address:
        # Field by field: model_dump() would build a dict through pydantic's serializer first.
        return Address.clean(
            name=self.name,
            line1=self.line1,
            line2=self.line2,
            city=self.city,
            postal_code=self.postal_code,
            country=self.country,
            phone=self.phone,
        )


class ClaimIn(_Request):
    field_codes = {
        "quantity": "invalid_quantity",
        "shipping_address.country": "invalid_country",
        "shipping_address.postal_code": "invalid_postal_code",
        "shipping_address.phone": "invalid_phone",
        "shipping_address": "invalid_address",  # its other fields, or the address as a whole
    }
    quantity: Annotated[int, Field(ge=1, le=MAX_CLAIM_QUANTITY)] = 1
    shipping_address: AddressIn


def offer_to_wire(offer: FlashOffer, stock: StockFigure | None) -> dict[str, Any]:
    """`remaining` and `stock_version` are None while the stock is being restored; the
    version also once the offer has ended (see StockFigure)."""
    return {
        "id": offer.id,
        "room_id": offer.room_id,
        "product_id": offer.product_id,
        "price": offer.price.to_wire(),
        "quantity": offer.quantity,
        "per_user_limit": offer.per_user_limit,
        "remaining": None if stock is None else stock.remaining,
        "stock_version": None if stock is None else stock.version,
        "starts_at": iso_utc(offer.starts_at),
        "ends_at": iso_utc(offer.ends_at),
        "ended_at": iso_utc(offer.ended_at),
        "end_reason": None if offer.end_reason is None else offer.end_reason.value,
    }


def address_to_wire(address: Address) -> dict[str, str | None]:
    # Spelled out rather than dataclasses.asdict(), which recurses and copies every value and
    # cost as much as the rest of an order's answer; same keys, in the same order.
    return {
        "name": address.name,
        "line1": address.line1,
        "city": address.city,
        "postal_code": address.postal_code,
        "country": address.country,
        "line2": address.line2,
        "phone": address.phone,
    }


def order_to_wire(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "status": order.status.value,
        "offer_id": order.offer_id,
        "room_id": order.room_id,
        "buyer_id": order.buyer_id,
        # The key of the claim that made it: a buyer with claims in flight on several devices
        # tells which one this answers (each `order.updated` goes to all of them).
        "idempotency_key": client_key(order.buyer_id, order.idempotency_key),
        "product": order.product,
        "unit_price": order.unit_price.to_wire(),
        "quantity": order.quantity,
        "total": order.total.to_wire(),
        "shipping_address": address_to_wire(order.shipping_address),
        "created_at": iso_utc(order.created_at),
        "reservation_expires_at": iso_utc(order.reservation_expires_at),
        "history": [
            {
                "from": None if step.from_status is None else step.from_status.value,
                "to": step.to_status.value,
                "at": iso_utc(step.at),
                "by": step.by,
                "reason": step.reason,
            }
            for step in order.history
        ],
    }


class OrderListQuery(ListQuery):
    room_id: ResourceId | None = None
    limit: QueryInt = Field(default=50, ge=1, le=200)
    # Checked by the service, so that any bad cursor answers `invalid_cursor`.
    cursor: str | None = None
