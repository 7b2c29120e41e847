"""Ids of what Liveshop makes: rooms, products, offers and orders."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """`prefix_` and 16 URL-safe random characters: unguessable, so an id learned tells nothing
    of the others."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"
