"""Access tokens: JWT HS256 signed with LIVESHOP_SECRET (claims sub, role, exp, iat, name, country).

PyJWT issues them; verifying is done here (see `_verify`), for speed."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from server.domain.errors import Unauthorized
from server.domain.identity import MAX_USER_ID, SYSTEM, Identity, Role
from server.domain.text import hidden_character, refused_coming_in

ALGORITHM = "HS256"
# Tokens already verified, with their expiry: a shopper's app sends the same token with every
# request, and checking its signature again costs more than the rest of answering a refusal.
# Only tokens that passed verification get in, and each still ends at its `exp`.
VERIFIED_TOKENS = 10_000
# Ordered, to forget the least recently used in O(1): a plain dict's first key is found by
# walking over the slots its earlier deletions left, which cost 3 µs a new token once it was full.
_verified: OrderedDict[tuple[str, str], tuple[Identity, float]] = OrderedDict()
_wall_clock = time.time  # tests move it
# How far ahead of ours the issuer's clock may be: a token issued (`iat`) or valid from (`nbf`)
# a moment "in the future" was signed on a machine whose clock is ahead, not forged, and a
# shopper who just signed in must not hear their token is invalid. Never applied to `exp`.
CLOCK_SKEW_SECONDS = 60


def _valid_subject(sub: str) -> bool:
    """A user id shown to other people (chat, orders): held to the rules their own text is,
    and not the one an order's history gives Liveshop itself."""
    return 0 < len(sub) <= MAX_USER_ID and not _hides_something(sub) and sub != SYSTEM


def _hides_something(text: str) -> bool:
    # As text coming in is held to (schemas: `_visible`), so that any subject can be muted.
    return hidden_character(text) is not None or refused_coming_in(text) is not None


def issue_token(
    secret: str,
    user_id: str,
    role: Role,
    *,
    name: str | None = None,
    country: str | None = None,
    ttl_seconds: int = 3600,
    now: datetime | None = None,
) -> str:
    """A signed token for `user_id`; ValueError for one the server would refuse (a subject or
    name with a control or hidden character, a subject too long) or cannot write (its
    lifetime ending after the year 9999)."""
    if not _valid_subject(user_id):
        raise ValueError(
            f"a user id is 1 to {MAX_USER_ID} characters, none of them control or hidden ones,"
            f" and not {SYSTEM!r}"
        )
    if name and _hides_something(name):
        raise ValueError("a name may not hold a control or hidden character")
    issued = now or datetime.now(UTC)
    try:
        expires = issued + timedelta(seconds=ttl_seconds)
    except OverflowError:
        raise ValueError("a token's lifetime must end before the year 10000") from None
    claims: dict[str, object] = {"sub": user_id, "role": role.value, "iat": issued, "exp": expires}
    if name:
        claims["name"] = name
    if country:
        claims["country"] = country.upper()
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Identity:
    """The identity a token proves, or Unauthorized for anything forged, expired or malformed."""
    cached = _verified.get((secret, token))
    if cached is not None:
        identity, expires = cached
        if _wall_clock() < expires:
            _verified.move_to_end((secret, token))  # in use: the last to be forgotten
            return identity
        del _verified[(secret, token)]
        raise Unauthorized("token has expired", code="token_expired")
    identity, expires = _verify(secret, token)
    if len(_verified) >= VERIFIED_TOKENS:
        _verified.popitem(last=False)  # the least recently used
    _verified[(secret, token)] = (identity, expires)
    return identity


def verify_socket_token(secret: str, token: str) -> tuple[Identity, float]:
    """As `verify_token`, for a websocket's token, with when it expires (epoch seconds, as the
    token says: any number, not always a date Python can hold): the socket's rights end then.
    Checked once for the socket's life and not remembered, which would only add ~0.7 KB to
    every idle viewer."""
    return _verify(secret, token)


# Verification is done here rather than by `jwt.decode`: that costs ~25 µs per token (a Python
# generator walks every character of every segment, then layers of options and claim checks), and
# every first request of every shopper in a flash sale pays it. This one is strict (HS256 only,
# compact form, canonical unpadded base64url) and costs a few µs; tests/unit/test_auth.py checks
# it answers as `jwt.decode` does, and pins where it deliberately does not.
MAX_TOKEN_CHARS = 4096  # ours are ~250: bounds the work done on garbage before anything else
# Three non-empty base64url segments, nothing else: `base64.urlsafe_b64decode` on its own would
# take '+' '/' for '-' '_', skip '=' and junk anywhere, so one token would have many spellings.
# Padding '=' is refused: RFC 7515 forbids it in the compact form and our issuer never pads
# (PyJWT accepts it, for issuers that do; we have none).
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# What a segment's last character may be, by the segment's length % 4. A last quantum of 2 or 3
# characters carries 8 or 16 bits in 12 or 18: the 4 or 2 bits left over must be zero, else many
# strings decode to the same bytes (a token could be altered without touching its signature:
# GHSA-hxm8-2xgr-2p9m). A length % 4 of 1 holds no whole byte and is never valid. Same as
# checking that re-encoding the decoded bytes gives back the segment, without encoding.
_LAST_CHARACTER = (_ALPHABET, "", _ALPHABET[::16], _ALPHABET[::4])
# The header `issue_token` writes (PyJWT sorts its keys, no spaces): known good, so the hot path
# need not decode it. Any other header is decoded and checked.
_ISSUED_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()


def _verify(secret: str, token: str) -> tuple[Identity, float]:
    if len(token) > MAX_TOKEN_CHARS or (segments := _COMPACT.fullmatch(token)) is None:
        raise _invalid()
    header_segment, payload_segment, signature_segment = segments.groups()
    if header_segment != _ISSUED_HEADER:
        header = _json_object(header_segment)
        # The algorithm is ours to choose, never the token's: anything but HS256 ("none", RS/ES
        # whose public key could pose as an HMAC secret, HS384...) is refused before any crypto.
        # Nor do we honour extensions a `crit` header would make mandatory.
        if header.get("alg") != ALGORITHM or header.get("typ", "JWT") != "JWT" or "crit" in header:
            raise _invalid()
    signature = _base64url(signature_segment)
    signer = _signer(secret).copy()
    signer.update(f"{header_segment}.{payload_segment}".encode("ascii"))
    expected = signer.digest()
    # Constant-time comparison; the signature is checked before the payload is even parsed.
    if len(signature) != len(expected) or not hmac.compare_digest(signature, expected):
        raise _invalid()
    claims = _json_object(payload_segment)
    # From here the token is ours: checked in the order jwt.decode checks, to give the same answer.
    if any(claims.get(claim) is None for claim in ("sub", "role", "exp")):
        raise _invalid()
    now = _wall_clock()
    for claim in ("iat", "nbf"):  # not issued in the future, not valid yet: refused
        if claim not in claims:
            continue
        if (at := _seconds(claims[claim])) is None:
            raise _invalid()
        if at > now + CLOCK_SKEW_SECONDS:
            raise Unauthorized(
                f"token is not valid yet (`{claim}` is ahead of the server's clock)",
                code="invalid_token",
            )
    if (expires := _seconds(claims["exp"])) is None:
        raise _invalid()
    if expires <= now:
        raise Unauthorized("token has expired", code="token_expired")
    if claims.get("aud"):  # meant for some other audience: we name none (RFC 7519 4.1.3)
        raise _invalid()
    sub, role, name, country = (claims.get(k) for k in ("sub", "role", "name", "country"))
    # Both are shown to other people (chat, orders): held to the rules their own text is.
    if not isinstance(sub, str) or not _valid_subject(sub):
        raise Unauthorized("token subject is invalid", code="invalid_token")
    if isinstance(name, str) and _hides_something(name):
        raise Unauthorized("token name has a control or hidden character", code="invalid_token")
    try:
        parsed_role = Role(str(role))
    except ValueError:
        raise Unauthorized("token role is invalid", code="invalid_token") from None
    identity = Identity(
        user_id=sub,
        role=parsed_role,
        name=name if isinstance(name, str) else None,
        country=country if isinstance(country, str) else None,
    )
    return identity, expires


@functools.lru_cache(maxsize=4)
def _signer(secret: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with `secret`, to copy: cheaper than keying it again for every token."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _invalid() -> Unauthorized:
    return Unauthorized("token is invalid", code="invalid_token")


def _base64url(segment: str) -> bytes:
    """The bytes of a segment `_COMPACT` matched, if it is canonical (see `_LAST_CHARACTER`)."""
    if segment[-1] not in _LAST_CHARACTER[len(segment) % 4]:
        raise _invalid()
    try:  # cannot fail once the above holds; should it ever, it is still not a valid token
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise _invalid() from None


def _json_object(segment: str) -> dict[str, Any]:
    try:  # JSON between systems is UTF-8 (RFC 8259 8.1); decoding it first is also quicker
        value = json.loads(_base64url(segment).decode())
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        raise _invalid() from None
    if not isinstance(value, dict):
        raise _invalid()
    return value


def _seconds(value: object) -> float | None:
    """A NumericDate claim as jwt.decode compares it (`int(value)`, so 99.9 counts as 99), or None
    if it is no JSON number: not a string, nor a bool (both of which `int()` would take), nor
    NaN, an infinity or an integer beyond a float's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(int(value))
    except (ValueError, OverflowError):
        return None
