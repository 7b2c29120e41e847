"""The room protocol's refusals: what each bad frame is answered, which ones count towards
closing the socket (4029), and what an error frame carries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from channels.close_codes import CloseCode
from channels.protocol import AddLikes, Claim, Close, Publish, Reply, error_frame
from server.domain.errors import Conflict
from server.domain.identity import Identity, Role
from tests.unit.channels.protocol_fakes import (
    HOST,
    MODERATOR,
    SHOPPER,
    error_code,
    send,
    session,
)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "malformed_json"),
        ('{"type": "like", "count": NaN}', "malformed_json"),
        ('{"type": "like", "count": Infinity}', "malformed_json"),
        ('{"type": "like", "count": 1e400}', "malformed_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"text": "no type"}', "invalid_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "like", "count": "3"}', "invalid_frame"),
        ('{"type": "like", "count": 0}', "invalid_frame"),
        ('{"type": "chat.send", "text": "hi", "extra": 1}', "invalid_frame"),
        ('{"type": "chat.send", "text": 5}', "invalid_frame"),
        ('{"type": "chat.send", "text": "   "}', "empty_message"),
        (json.dumps({"type": "chat.send", "text": "x" * 501}), "message_too_long"),
        (b"\x00\x01", "binary_not_supported"),
        (json.dumps({"type": "chat.send", "text": "y" * 1900}), "frame_too_large"),
    ],
)
def test_bad_frames_get_a_stable_error_code_and_change_nothing(raw: str | bytes, code: str) -> None:
    commands = send(session(SHOPPER, max_frame_bytes=1024), raw)
    assert error_code(commands) == code
    assert not any(isinstance(c, Publish | AddLikes) for c in commands)


CLAIM_ADDRESS = {"name": "A", "line1": "Rua 1", "city": "Lisboa", "country": "PT"}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"quantity": 0}, "invalid_quantity"),
        ({"quantity": 1001}, "invalid_quantity"),
        ({"shipping_address": None}, "invalid_address"),
        ({"shipping_address": {"name": "A", "line1": "Rua 1", "country": "PT"}}, "invalid_address"),
        ({"shipping_address": {**CLAIM_ADDRESS, "name": "n" * 201}}, "invalid_address"),
        ({"shipping_address": {**CLAIM_ADDRESS, "country": "PRT"}}, "invalid_country"),
        ({"shipping_address": {**CLAIM_ADDRESS, "postal_code": "1" * 21}}, "invalid_postal_code"),
        ({"shipping_address": {**CLAIM_ADDRESS, "phone": "+1" * 17}}, "invalid_phone"),
        ({"quantity": 0, "idempotency_key": "a b"}, "invalid_frame"),  # two fields at fault
        ({"offer_id": ""}, "invalid_frame"),
        ({"extra": 1}, "invalid_frame"),
    ],
)
def test_a_claims_faulty_field_hears_the_code_http_gives_it(
    change: dict[str, Any], code: str
) -> None:
    claim = {"type": "offer.claim", "offer_id": "of1", "idempotency_key": "k1", "ref": "r1"}
    frame = {**claim, "shipping_address": CLAIM_ADDRESS, **change}
    frame = {name: value for name, value in frame.items() if value is not None}  # None: left out
    commands = send(session(SHOPPER), frame)
    assert error_code(commands) == code
    assert not any(isinstance(c, Claim) for c in commands)


def test_slow_mode_out_of_bounds_hears_the_code_http_gives_it() -> None:
    commands = send(session(MODERATOR), {"type": "room.slow_mode", "seconds": -1})
    assert error_code(commands) == "invalid_slow_mode"


@pytest.mark.parametrize(
    "raw", ['{"type": "ping", "x": ' + "[" * 1000 + "]" * 1000 + "}", "[" * 1500]
)
def test_json_nested_deeper_than_the_parser_goes_is_malformed(raw: str) -> None:
    commands = send(session(SHOPPER, max_frame_bytes=4096), raw)
    assert error_code(commands) == "malformed_json"


def test_repeated_abuse_closes_the_socket() -> None:
    s = session(SHOPPER, max_bad_frames=3)
    assert not any(isinstance(c, Close) for c in send(s, "x") + send(s, "y"))
    closing = [c for c in send(s, "z") if isinstance(c, Close)]
    assert closing == [Close(CloseCode.ABUSE, "too many bad frames")]


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "offer.claim", "offer_id": "f1", "idempotency_key": "k1", "quantity": 0},
        {
            "type": "offer.claim",
            "offer_id": "f1",
            "idempotency_key": "k1",
            "shipping_address": {**CLAIM_ADDRESS, "name": ""},
        },
        {"type": "chat.send", "text": "   "},
        {"type": "like", "count": 0},
    ],
)
def test_frames_refused_for_what_they_say_never_close_the_socket(frame: dict[str, Any]) -> None:
    s = session(SHOPPER, max_bad_frames=3)
    for n in range(10):  # a shopper getting the address form wrong, again and again
        commands = send(s, frame, mono=float(n))
        assert error_code(commands) is not None
        assert not any(isinstance(c, Close) for c in commands)


def test_refused_frames_spend_the_frame_budget_and_a_flood_of_them_closes_the_socket() -> None:
    s = session(SHOPPER, frame_burst=3, max_bad_frames=2)
    faulty = {"type": "offer.claim", "offer_id": "f1", "idempotency_key": "k1", "quantity": 0}
    codes = [error_code(send(s, faulty, mono=0.0)) for _ in range(4)]
    assert codes == ["invalid_frame"] * 3 + ["rate_limited"]
    closing = [c for c in send(s, faulty, mono=0.0) if isinstance(c, Close)]
    assert closing == [Close(CloseCode.ABUSE, "too many bad frames")]


def test_a_flood_of_frames_is_throttled() -> None:
    s = session(SHOPPER, frame_burst=3, max_bad_frames=100)
    outcomes = [send(s, {"type": "ping"}, mono=0.0)[0] for _ in range(5)]
    assert [isinstance(o, Reply) and o.frame["type"] == "pong" for o in outcomes] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_an_errors_details_are_fields_of_its_frame() -> None:
    error = Conflict(
        "the offer starts at 2026-12-01T10:00:00.000Z: claim then",
        code="offer_not_active",
        details={"starts_at": "2026-12-01T10:00:00.000Z"},
    )
    assert error_frame(error, "k1") == {
        "type": "error",
        "code": "offer_not_active",
        "message": "the offer starts at 2026-12-01T10:00:00.000Z: claim then",
        "ref": "k1",
        "starts_at": "2026-12-01T10:00:00.000Z",
    }


@pytest.mark.parametrize("name", ["code", "ref", "type", "detail", "errors"])
def test_an_errors_details_cannot_stand_in_for_its_own_fields(name: str) -> None:
    with pytest.raises(ValueError, match="details may not be named"):
        Conflict("the offer is not active", code="offer_not_active", details={name: "x"})


def test_the_hosts_id_in_a_shoppers_token_cannot_moderate() -> None:
    """As for an order or a room's figures: the host's id alone, in a shopper's token, is not
    the host."""
    as_shopper = Identity(HOST.user_id, Role.SHOPPER)
    for frame in (
        {"type": "user.ban", "user_id": "someone"},
        {"type": "user.mute", "user_id": "someone"},
        {"type": "room.slow_mode", "seconds": 30},
    ):
        assert error_code(send(session(as_shopper), frame)) == "forbidden"


def test_the_frame_size_limit_counts_bytes_not_characters() -> None:
    raw = json.dumps({"type": "chat.send", "text": "\u20ac" * 500}, ensure_ascii=False)
    assert len(raw) < 1024 < len(raw.encode())
    assert error_code(send(session(HOST, max_frame_bytes=1024), raw)) == "frame_too_large"


def test_a_mute_of_no_time_is_refused() -> None:
    """It would tell the room of a mute already over."""
    commands = send(session(HOST), {"type": "user.mute", "user_id": "u1", "duration_seconds": 0})
    assert error_code(commands) == "invalid_frame"
    assert not any(isinstance(command, Publish) for command in commands)
