"""Access tokens: a verified token is remembered until its expiry, and only a verified one; the
verifier refuses every forged or malformed token, and answers as `jwt.decode` (the verifier it
replaced, kept here as the oracle) does."""

from __future__ import annotations

import base64
import hmac
import json
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from server import auth
from server.auth import issue_token, verify_socket_token, verify_token
from server.domain.errors import Unauthorized
from server.domain.identity import Identity, Role

SECRET = "test-only-secret-0123456789abcdef0123"  # test-only key
OTHER_SECRET = "another-test-only-secret-0123456789ab"  # test-only key


@pytest.fixture(autouse=True)
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Seconds the test moves the verifier's clock on by. It otherwise follows the real clock,
    which `issue_token` (for `iat` and `exp`) and `jwt.decode` read."""
    shift = [0.0]
    monkeypatch.setattr(auth, "_wall_clock", lambda: time.time() + shift[0])
    monkeypatch.setattr(auth, "_verified", OrderedDict())
    return shift


def test_a_remembered_token_still_ends_at_its_expiry(wall_clock: list[float]) -> None:
    token = issue_token(SECRET, "u1", Role.SHOPPER, ttl_seconds=60)
    identity = verify_token(SECRET, token)
    assert identity.user_id == "u1"
    assert verify_token(SECRET, token) is identity  # remembered
    wall_clock[0] += 61
    with pytest.raises(Unauthorized) as error:
        verify_token(SECRET, token)
    assert error.value.code == "token_expired"
    assert auth._verified == {}


def test_only_verified_tokens_are_remembered() -> None:
    token = issue_token(SECRET, "u1", Role.SHOPPER)
    verify_token(SECRET, token)
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    for _ in range(2):
        with pytest.raises(Unauthorized) as error:
            verify_token(SECRET, forged)
        assert error.value.code == "invalid_token"
    # Another secret (a rotated one) does not reuse what the old one verified.
    with pytest.raises(Unauthorized):
        verify_token(OTHER_SECRET, token)
    assert list(auth._verified) == [(SECRET, token)]


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 3)
    tokens = [issue_token(SECRET, f"u{i}", Role.SHOPPER) for i in range(5)]
    for token in tokens:
        verify_token(SECRET, token)
    assert [token for _, token in auth._verified] == tokens[2:]


def test_the_memory_forgets_the_least_recently_used_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 3)
    tokens = [issue_token(SECRET, f"u{i}", Role.SHOPPER) for i in range(4)]
    for token in tokens[:3]:
        verify_token(SECRET, token)
    verify_token(SECRET, tokens[0])  # a shopper still sending requests
    verify_token(SECRET, tokens[3])
    assert [token for _, token in auth._verified] == [tokens[2], tokens[0], tokens[3]]


def test_a_sockets_token_is_checked_once_not_remembered_and_tells_its_expiry() -> None:
    issued = datetime.now(UTC).replace(microsecond=0)  # `exp` is in whole seconds
    token = issue_token(SECRET, "u1", Role.SHOPPER, ttl_seconds=600, now=issued)
    identity, expires = verify_socket_token(SECRET, token)
    assert identity.user_id == "u1"
    assert expires == issued.timestamp() + 600
    assert auth._verified == {}
    # An issuer's mistake (milliseconds for seconds): far past any date, still only a number.
    forever = jwt.encode({"sub": "u2", "role": "shopper", "exp": 10**13}, SECRET, "HS256")
    assert verify_socket_token(SECRET, forever) == (Identity("u2", Role.SHOPPER), 10**13)


# --- Building tokens, forged ones included ---------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(signing_input: str, secret: str = SECRET) -> str:
    return b64(hmac.digest(secret.encode(), signing_input.encode(), "sha256"))


def signed(header: object, payload: object, *, secret: str = SECRET) -> str:
    """A compact JWS signed with HMAC-SHA256 whatever its header says; bytes are taken as is."""
    segments = [
        b64(part if isinstance(part, bytes) else json.dumps(part).encode())
        for part in (header, payload)
    ]
    signing_input = ".".join(segments)
    return f"{signing_input}.{hs256(signing_input, secret)}"


def claims(**changes: object) -> dict[str, object]:
    """Valid claims for shopper u1, with `changes` (a value of ... removes the claim)."""
    now = int(time.time())
    valid: dict[str, object] = {"sub": "u1", "role": "shopper", "iat": now, "exp": now + 600}
    valid.update(changes)
    return {name: value for name, value in valid.items() if value is not ...}


HS256 = {"alg": "HS256", "typ": "JWT"}


def with_last_character(segment: str, step: int) -> str:
    alphabet = auth._ALPHABET
    return segment[:-1] + alphabet[(alphabet.index(segment[-1]) + step) % 64]


def respelled(respell: Callable[[str], str], **changes: object) -> str:
    """A token signed with our secret over a payload segment `respell` changed: one that
    `base64.urlsafe_b64decode` still decodes to the same claims."""
    header, payload, _ = signed(HS256, claims(**changes)).split(".")
    signing_input = f"{header}.{respell(payload)}"
    return f"{signing_input}.{hs256(signing_input)}"


def padded(segment: str) -> str:
    assert len(segment) % 4, "needs no padding"
    return segment + "=" * (-len(segment) % 4)


def padded_payload() -> str:
    length = len(json.dumps(claims(jti="")).encode())  # 1 byte past whole 3-byte groups:
    return respelled(padded, jti="x" * ((1 - length) % 3))  # 2 base64 characters past 4s


def plain_base64(segment: str) -> str:
    assert "-" in segment
    assert "_" in segment
    return segment.replace("-", "+").replace("_", "/")


def forged_tokens() -> dict[str, str]:
    """Tokens that must be refused as invalid_token: forged (no secret needed to make them), or
    signed with our secret but malformed. Built on each call: claims are relative to the clock."""
    now = int(time.time())
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    header, payload, signature = good.split(".")
    admin = b64(json.dumps(claims(role="admin")).encode())
    other_signature = jwt.encode(claims(sub="u2"), SECRET).split(".")[2]
    with warnings.catch_warnings():  # that SECRET is short for HS512
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        hs512 = jwt.encode(claims(), SECRET, algorithm="HS512")
    return {
        # The algorithm is not the token's to choose.
        "alg none, unsigned": jwt.encode(claims(), None, algorithm="none"),
        "alg none, signed": signed({"alg": "none", "typ": "JWT"}, claims()),
        "alg HS512, signed with HS512": hs512,
        "alg HS512, signed with HS256": signed({"alg": "HS512"}, claims()),
        "alg RS256, signed with HS256": signed({"alg": "RS256", "typ": "JWT"}, claims()),
        "alg ES256, signed with HS256": signed({"alg": "ES256"}, claims()),
        "alg hs256": signed({"alg": "hs256"}, claims()),
        "alg as a list": signed({"alg": ["HS256"]}, claims()),
        "header without alg": signed({"typ": "JWT"}, claims()),
        "alg null": signed({"alg": None}, claims()),
        "crit header": signed({**HS256, "crit": ["exp"]}, claims()),
        "crit b64 (PyJWT knows it)": signed({**HS256, "crit": ["b64"], "b64": True}, claims()),
        "typ not JWT": signed({**HS256, "typ": "at+jwt"}, claims()),
        "header a JSON array": signed(["HS256"], claims()),
        "header not JSON": signed(b"HS256", claims()),
        # The signature.
        "signed with another secret": jwt.encode(claims(), OTHER_SECRET, algorithm="HS256"),
        "payload changed, old signature": f"{header}.{admin}.{signature}",
        "payload changed, another's signature": f"{header}.{admin}.{other_signature}",
        "signature truncated by 1": good[:-1],
        "signature truncated by 2": good[:-2],
        "signature truncated by 4": good[:-4],
        "signature extended": good + "AAAA",
        "signature of zeros": f"{header}.{payload}.{b64(bytes(32))}",
        # The compact form.
        "extra segment": f"{good}.{signature}",
        "two segments": f"{header}.{payload}",
        "one segment": header,
        "empty": "",
        "dots only": "..",
        "empty header": f".{payload}.{hs256('.' + payload)}",
        "empty payload": f"{header}..{hs256(header + '.')}",
        "empty signature": f"{header}.{payload}.",
        "padding =": good + "=",
        "padding ==": good + "==",
        "payload padded, signed": padded_payload(),
        "'=' inside payload, signed": respelled(lambda segment: f"{segment[:4]}===={segment[4:]}"),
        "'+' '/' in payload, signed": respelled(plain_base64, jti="~~~~~?????"),
        "whitespace inside": f"{header}. {payload}.{signature}",
        "trailing newline": good + "\n",
        "'!' in signature": f"{header}.{payload}.!{signature[1:]}",
        "'+' in signature": f"{header}.{payload}.+{signature[1:]}",
        "'/' in payload": f"{header}.{payload[:-1]}/.{signature}",
        "non-ASCII letter": f"{header}.{payload}.é{signature[1:]}",
        # Base64 spelled non-canonically: the same bytes, so the same valid signature.
        "signature's unused bits 01": f"{header}.{payload}.{with_last_character(signature, 1)}",
        "signature's unused bits 11": f"{header}.{payload}.{with_last_character(signature, 3)}",
        "length % 4 == 1": f"{header}.{payload}.{signature}A",
        # The payload, signed with our secret but malformed.
        "payload a JSON array": signed(HS256, [claims()]),
        "payload a JSON string": signed(HS256, "u1"),
        "payload not JSON": signed(HS256, b"sub=u1;role=admin"),
        "payload not UTF-8": signed(HS256, b'{"sub":"\xff","role":"shopper"}'),
        "payload in UTF-16": signed(HS256, json.dumps(claims()).encode("utf-16-le")),
        "payload nested deep": signed(HS256, b"[" * 2000),
        "exp missing": signed(HS256, claims(exp=...)),
        "exp null": signed(HS256, claims(exp=None)),
        "exp a numeric string": signed(HS256, claims(exp=str(now + 600))),
        "exp a word": signed(HS256, claims(exp="tomorrow")),
        "exp a bool": signed(HS256, claims(exp=True)),
        "exp NaN": signed(HS256, claims(exp=float("nan"))),
        "exp Infinity": signed(HS256, claims(exp=float("inf"))),
        "exp beyond a float": signed(HS256, claims(exp=10**400)),
        "sub missing": signed(HS256, claims(sub=...)),
        "sub empty": signed(HS256, claims(sub="")),
        "sub a number": signed(HS256, claims(sub=7)),
        "sub too long": signed(HS256, claims(sub="u" * 129)),
        "sub with a NUL": signed(HS256, claims(sub="u\u00001")),
        "sub with a bidi override": signed(HS256, claims(sub="\u202eu1")),
        "name with a bidi override": signed(HS256, claims(name="\u202eMia")),
        "role missing": signed(HS256, claims(role=...)),
        "role unknown": signed(HS256, claims(role="root")),
        "role a list": signed(HS256, claims(role=["admin"])),
        "nbf beyond the clock skew": signed(HS256, claims(nbf=now + 120)),
        "nbf a word": signed(HS256, claims(nbf="soon")),
        "nbf a numeric string": signed(HS256, claims(nbf=str(now))),
        "iat beyond the clock skew": signed(HS256, claims(iat=now + 120)),
        "iat beyond the clock skew, expired": signed(HS256, claims(iat=now + 120, exp=now - 60)),
        "iat a word": signed(HS256, claims(iat="now")),
        "iat a numeric string": signed(HS256, claims(iat=str(now))),
        "iat a bool": signed(HS256, claims(iat=True)),
        "aud (not ours)": signed(HS256, claims(aud="another-service")),
        "oversized": signed(HS256, claims(pad="x" * 4096)),
    }


def valid_tokens() -> dict[str, str]:
    """Tokens that verify: those we issue, and others PyJWT writes (or could) with our secret."""
    now = time.time()
    return {
        "issued, shopper": issue_token(SECRET, "u1", Role.SHOPPER),
        "issued, host": issue_token(SECRET, "h1", Role.HOST, name="Host", country="de"),
        "issued, moderator": issue_token(SECRET, "m1", Role.MODERATOR, name="Mod"),
        "issued, admin": issue_token(SECRET, "a1", Role.ADMIN, ttl_seconds=10),
        "no typ": jwt.encode(claims(), SECRET, headers={"typ": None}),
        "kid": jwt.encode(claims(), SECRET, headers={"kid": "key-1"}),
        "other headers": jwt.encode(claims(), SECRET, headers={"cty": "x", "x5u": "https://x"}),
        "header keys unsorted": jwt.encode(claims(), SECRET, sort_headers=False),
        "header with spaces": signed({"typ": "JWT", "alg": "HS256"}, claims()),
        "unused claims": jwt.encode(claims(name="Zoë", iss="liveshop", jti="j1"), SECRET),
        "odd name and country": jwt.encode(claims(sub="ü" * 128, name=7, country=["FR"]), SECRET),
        "fractional times": jwt.encode(claims(exp=int(now) + 600.5, iat=now - 1), SECRET),
        "nbf past, empty aud": jwt.encode(claims(nbf=int(now) - 10, aud=""), SECRET),
        "no iat": jwt.encode(claims(iat=...), SECRET),
        "issued by a clock 30 s ahead": jwt.encode(claims(iat=now + 30, nbf=now + 30), SECRET),
        # Ignored although `jwt.decode` refuses them (see DIFFERENCES).
        "kid not a string": signed({**HS256, "kid": 1}, claims()),
        "b64 false without crit": signed({**HS256, "b64": False}, claims()),
        "jti not a string": signed(HS256, claims(jti=1)),
    }


def expired_tokens() -> dict[str, str]:
    now = int(time.time())
    return {
        "issued in 2020": issue_token(
            SECRET, "u1", Role.SHOPPER, now=datetime(2020, 1, 1, tzinfo=UTC)
        ),
        "expired a second ago": jwt.encode(claims(exp=now - 1), SECRET),
        "expired, sub empty": jwt.encode(claims(exp=now - 1, sub=""), SECRET),
        "expired, role unknown": jwt.encode(claims(exp=now - 1, role="root"), SECRET),
    }


U1 = Identity(user_id="u1", role=Role.SHOPPER)
# Where `jwt.decode` answers otherwise, and what it answers. Stricter: forms our issuer never
# writes (padding, another typ, crit, times as strings or bools, non-UTF-8 JSON, huge tokens or
# times). Looser: header fields and claims we do not use, in tokens only the secret can sign.
DIFFERENCES: dict[str, Identity | str] = {
    # Shown to other people: held to the rules of the text they write (server.domain.text).
    "sub with a NUL": Identity(user_id="u\u00001", role=Role.SHOPPER),
    "sub with a bidi override": Identity(user_id="\u202eu1", role=Role.SHOPPER),
    "name with a bidi override": Identity(user_id="u1", role=Role.SHOPPER, name="\u202eMia"),
    "crit b64 (PyJWT knows it)": U1,
    "typ not JWT": U1,
    "padding =": U1,
    "payload padded, signed": U1,
    "payload in UTF-16": U1,
    "exp a numeric string": U1,
    "exp a bool": "token_expired",  # int(True) == 1: long past
    "exp beyond a float": U1,
    "nbf a numeric string": U1,
    "iat a numeric string": U1,
    "iat a bool": U1,
    "oversized": U1,
    "issued by a clock 30 s ahead": "invalid_token",  # PyJWT allows no skew unless told to
    "kid not a string": "invalid_token",
    "b64 false without crit": "invalid_token",
    "jti not a string": "invalid_token",
}


def outcome(verify: Callable[[str], Identity], token: str) -> Identity | str:
    """The identity `verify` gives, or the code of the Unauthorized it raises."""
    try:
        return verify(token)
    except Unauthorized as error:
        return error.code


def ours(token: str) -> Identity | str:
    return outcome(lambda token: verify_socket_token(SECRET, token)[0], token)


def pyjwt(token: str) -> Identity | str:
    """What the verifier this module had before answered: `jwt.decode`, then the same checks."""

    def verify(token: str) -> Identity:
        try:
            decoded = jwt.decode(
                token, SECRET, algorithms=["HS256"], options={"require": ["sub", "role", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("token is invalid", code="invalid_token") from None
        sub, role, name, country = (decoded.get(k) for k in ("sub", "role", "name", "country"))
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise Unauthorized("token subject is invalid", code="invalid_token")
        if str(role) not in set(Role):
            raise Unauthorized("token role is invalid", code="invalid_token")
        return Identity(
            user_id=sub,
            role=Role(str(role)),
            name=name if isinstance(name, str) else None,
            country=country if isinstance(country, str) else None,
        )

    return outcome(verify, token)


# --- The verifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_tokens_it_issues_verify(role: Role) -> None:
    token = issue_token(SECRET, "user-7", role, name="Ada", country="fr", ttl_seconds=300)
    identity, expires = auth._verify(SECRET, token)
    assert identity == Identity(user_id="user-7", role=role, name="Ada", country="FR")
    assert expires == jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    assert verify_token(SECRET, token) == identity


@pytest.mark.parametrize(
    ("user_id", "name"),
    [
        *[("a\tb", None), ("\u202eu1", None), ("u" * 129, None), ("", None), ("u1", "Mia\u200b")],
        ("system", None),  # Liveshop's own name in an order's history
    ],
)
def test_it_issues_no_token_the_verifier_would_refuse(user_id: str, name: str | None) -> None:
    with pytest.raises(ValueError, match=r"control or hidden"):
        issue_token(SECRET, user_id, Role.SHOPPER, name=name)
    # What the verifier says of such a token, signed all the same.
    claims = {"sub": user_id, "role": "shopper", "exp": 4_102_444_800, "name": name}
    with pytest.raises(Unauthorized):
        verify_token(SECRET, jwt.encode(claims, SECRET, algorithm="HS256"))


def test_the_header_it_issues_is_the_one_known_good() -> None:
    """Else every token would take the slower path, decoding its header."""
    assert issue_token(SECRET, "u1", Role.SHOPPER).split(".")[0] == auth._ISSUED_HEADER


@pytest.mark.parametrize("name", list(valid_tokens()))
def test_valid_tokens_verify(name: str) -> None:
    assert isinstance(verify_token(SECRET, valid_tokens()[name]), Identity)


@pytest.mark.parametrize("name", list(forged_tokens()))
def test_forged_and_malformed_tokens_are_refused(name: str) -> None:
    token = forged_tokens()[name]
    with pytest.raises(Unauthorized) as error:
        verify_token(SECRET, token)
    assert error.value.code == "invalid_token"
    assert auth._verified == {}


@pytest.mark.parametrize("name", list(expired_tokens()))
def test_an_expired_token_says_so(name: str) -> None:
    with pytest.raises(Unauthorized) as error:
        verify_token(SECRET, expired_tokens()[name])
    assert error.value.code == "token_expired"


def test_a_token_expires_at_its_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    issued = datetime(2030, 1, 1, tzinfo=UTC)
    token = issue_token(SECRET, "u1", Role.SHOPPER, ttl_seconds=60, now=issued)
    exp = issued.timestamp() + 60
    for now, expected in [(exp - 0.001, U1), (exp, "token_expired"), (exp + 1, "token_expired")]:
        monkeypatch.setattr(auth, "_wall_clock", lambda now=now: now)
        assert ours(token) == expected, now


def test_time_claims_compare_as_jwt_decode_compares_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """It takes the whole seconds of a fractional time, as `int()` in `jwt.decode` does."""
    now = 2_000_000_000
    monkeypatch.setattr(auth, "_wall_clock", lambda: now + 0.5)
    assert ours(signed(HS256, claims(iat=now, exp=now + 0.9))) == "token_expired"
    assert ours(signed(HS256, claims(iat=now, exp=now + 1.0))) == U1
    ahead = now + auth.CLOCK_SKEW_SECONDS  # the issuer's clock may be ahead of ours so far
    assert ours(signed(HS256, claims(iat=ahead + 0.9, nbf=ahead + 0.9, exp=now + 99))) == U1
    assert ours(signed(HS256, claims(iat=ahead + 1, exp=now + 99))) == "invalid_token"
    assert ours(signed(HS256, claims(iat=now, nbf=ahead + 1, exp=now + 99))) == "invalid_token"


def test_a_token_from_an_issuer_whose_clock_is_ahead_is_taken_within_the_skew() -> None:
    """Signed on a machine whose clock is a few seconds ahead, a fresh token was refused as
    if forged: the shopper who had just signed in heard `invalid_token`."""
    now = int(time.time())
    assert ours(signed(HS256, claims(iat=now + 2, exp=now + 600))) == U1
    refused = signed(HS256, claims(nbf=now + auth.CLOCK_SKEW_SECONDS + 30, exp=now + 600))
    with pytest.raises(Unauthorized, match="not valid yet") as raised:
        verify_socket_token(SECRET, refused)
    assert raised.value.code == "invalid_token"


def test_the_signature_is_checked_before_the_payload_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = issue_token(SECRET, "u1", Role.SHOPPER)
    header, payload, _ = token.split(".")
    parsed: list[str] = []
    loads = json.loads

    def recording_loads(text: str) -> Any:
        parsed.append(text)
        return loads(text)

    monkeypatch.setattr(json, "loads", recording_loads)  # the module server.auth parses with
    assert ours(f"{header}.{payload}.{b64(bytes(32))}") == "invalid_token"
    assert parsed == []
    assert ours(token) == U1
    assert len(parsed) == 1


@pytest.mark.parametrize("remainder", [1, 2, 3])
def test_only_canonical_base64_is_decoded(remainder: int) -> None:
    """The check on the last character is the one PyJWT makes: re-encoding gives the segment."""
    for prefix in ("", "eyJh", "QUJD"):
        for last in auth._ALPHABET:
            segment = prefix + "AB"[: remainder - 1] + last
            try:
                padding = "=" * (-len(segment) % 4)
                canonical = b64(base64.urlsafe_b64decode(segment + padding)) == segment
            except ValueError:
                canonical = False
            try:
                auth._base64url(segment)
            except Unauthorized:
                assert not canonical, segment
            else:
                assert canonical, segment


def test_it_answers_as_jwt_decode_does() -> None:
    """Differential test: `jwt.decode` (with the checks the verifier made after it) gives the same
    identity or the same error code for every token, but for the pinned DIFFERENCES."""
    tokens = {**forged_tokens(), **valid_tokens(), **expired_tokens()}
    assert len(tokens) == len(forged_tokens()) + len(valid_tokens()) + len(expired_tokens())
    assert set(DIFFERENCES) <= set(tokens)
    for name, token in tokens.items():
        assert pyjwt(token) == DIFFERENCES.get(name, ours(token)), name
        if name in DIFFERENCES:
            assert pyjwt(token) != ours(token), name
    accepted = {name for name, token in tokens.items() if isinstance(ours(token), Identity)}
    assert accepted == set(valid_tokens())
