"""Access tokens: JWT HS256 signed with LIVESHOP_SECRET (claims sub, role, exp, name, country)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from server.domain.errors import Unauthorized
from server.domain.identity import Identity, Role

ALGORITHM = "HS256"


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


def verify_token(secret: str, token: str) -> Identity:
    """The identity a token proves, or Unauthorized for anything forged, expired or malformed."""
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
    return Identity(
        user_id=sub,
        role=parsed_role,
        name=name if isinstance(name, str) else None,
        country=country if isinstance(country, str) else None,
    )
