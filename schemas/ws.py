"""Websocket client frames: a discriminated union on `type`, unknown fields refused.

Every client frame may carry `ref`, echoed in the `error` frame for that request; chat frames
use `client_id` and claims `idempotency_key` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.commerce import AddressIn, ClaimIn, IdempotencyKey
from schemas.http import ResourceId, ShownRef, SlowModeIn, UserId
from server.domain.offers import MAX_CLAIM_QUANTITY
from server.domain.rooms import MAX_SLOW_MODE_SECONDS

Ref = Annotated[str, Field(min_length=1, max_length=64)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    ref: Ref | None = None


class ChatSend(_Frame):
    type: Literal["chat.send"]
    text: str  # bounded by the frame's size; clean_text holds it to the chat's limit
    client_id: ShownRef | None = None  # every viewer gets it: nothing hidden in it


class Like(_Frame):
    type: Literal["like"]
    count: Annotated[int, Field(ge=1, le=100)] = 1


class Ping(_Frame):
    type: Literal["ping"]


class OfferClaim(_Frame):
    type: Literal["offer.claim"]
    offer_id: ResourceId
    quantity: Annotated[int, Field(ge=1, le=MAX_CLAIM_QUANTITY)] = 1
    idempotency_key: IdempotencyKey
    shipping_address: AddressIn


class ChatDelete(_Frame):
    type: Literal["chat.delete"]
    message_id: ResourceId


class UserMute(_Frame):
    type: Literal["user.mute"]
    user_id: UserId
    duration_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 300


class UserBan(_Frame):
    type: Literal["user.ban"]
    user_id: UserId


class UserUnmute(_Frame):
    type: Literal["user.unmute"]
    user_id: UserId


class UserUnban(_Frame):
    type: Literal["user.unban"]
    user_id: UserId


class RoomSlowMode(_Frame):
    type: Literal["room.slow_mode"]
    seconds: Annotated[int, Field(ge=0, le=MAX_SLOW_MODE_SECONDS)]


ClientFrame = Annotated[
    ChatSend
    | Like
    | Ping
    | OfferClaim
    | ChatDelete
    | UserMute
    | UserUnmute
    | UserBan
    | UserUnban
    | RoomSlowMode,
    Field(discriminator="type"),
]

client_frame: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
# By frame type: a fault in one of these fields answers the code the HTTP API gives it (see
# RequestModel.field_codes); any other fault of a frame is `invalid_frame`.
FIELD_CODES: Mapping[str, Mapping[str, str]] = {
    "offer.claim": {"idempotency_key": "invalid_idempotency_key", **ClaimIn.field_codes},
    "room.slow_mode": SlowModeIn.field_codes,
}
