"""What the composition root (app.py lifespan) builds and the HTTP and websocket layers use.

Handlers reach it as `request.app.state.container` (or `websocket.app.state.container`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.ports import RoomStore
from server.settings import Settings

if TYPE_CHECKING:
    from channels.hub import Hub
    from server.adapters.redis_access import RedisChecks
    from server.services.offers import OfferService
    from server.services.orders import OrderService
    from server.services.rooms import RoomService


@dataclass(slots=True)
class Container:
    settings: Settings
    rooms: RoomStore
    room_service: RoomService
    hub: Hub
    offer_service: OfferService
    order_service: OrderService
    # The checks of the stock's Redis, for /readyz; None with stock in memory (nothing to check).
    redis_checks: RedisChecks | None = None
