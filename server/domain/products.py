"""Products as the catalog holds them (minimal here; flash offers add trade fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from server.domain.money import Money


@dataclass(slots=True)
class Product:
    id: str
    owner_id: str
    title: str
    price: Money
    stock: int
    created_at: datetime
    images: list[str] = field(default_factory=list)
