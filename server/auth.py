"""Access tokens: JWT HS256 signed with LIVESHOP_SECRET (claims sub, role, exp, name, country)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt

from server.domain.errors import Unauthorized
from server.domain.identity import Identity, Role

ALGORITHM = "HS256"
# Tokens already verified, with their expiry: a shopper's app sends the same token with every
# request, and checking its signature again costs more than the rest of answering a refusal.
# Only tokens that passed verification get in, and each still ends at its `exp`.
VERIFIED_TOKENS = 10_000
_verified: dict[tuple[str, str], tuple[Identity, float]] = {}
_wall_clock = time.time  # tests move it


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
    issued = now or datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": user_id,
        "role": role.value,
        "iat": issued,
        "exp": issued + timedelta(seconds=ttl_seconds),
    }
    if name:
        claims["name"] = name
    if country:
        claims["country"] = country.upper()
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str, *, remember: bool = True) -> Identity:
    """The identity a token proves, or Unauthorized for anything forged, expired or malformed.
    `remember=False` for a token that will not come back soon (a websocket's, checked once for
    the socket's life): remembering it would only cost memory."""
    cached = _verified.get((secret, token))
    if cached is not None:
        identity, expires = cached
        if _wall_clock() < expires:
            return identity
        del _verified[(secret, token)]
        raise Unauthorized("token has expired", code="token_expired")
    identity, expires = _verify(secret, token)
    if not remember:
        return identity
    if len(_verified) >= VERIFIED_TOKENS:
        del _verified[next(iter(_verified))]  # the oldest
    _verified[(secret, token)] = (identity, expires)
    return identity


def _verify(secret: str, token: str) -> tuple[Identity, float]:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "role", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token has expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("token is invalid", code="invalid_token") from None
    sub, role, name, country = (claims.get(k) for k in ("sub", "role", "name", "country"))
    if not isinstance(sub, str) or not sub or len(sub) > 128:
        raise Unauthorized("token subject is invalid", code="invalid_token")
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
    return identity, float(claims["exp"])
