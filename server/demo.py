"""`liveshop demo`: a host, a few products and a live room with a pinned product and a running
flash offer."""

from __future__ import annotations

import ipaddress
import shlex
import sys
from decimal import Decimal
from pathlib import Path

from server.auth import issue_token
from server.container import Container
from server.domain.identity import Identity, Role
from server.domain.money import Money
from server.domain.products import Product
from server.domain.rooms import MAX_LIVE_ROOMS_PER_HOST, Room, RoomStatus

DEMO_HOST = Identity(user_id="demo-host", role=Role.HOST, name="Mia (demo host)")

_PRODUCTS = [
    ("Glow serum 30 ml", "24.90", 500, "https://picsum.photos/seed/serum/600/600"),
    ("Wireless earbuds", "59.00", 200, "https://picsum.photos/seed/earbuds/600/600"),
    ("Silk scarf", "35.50", 120, "https://picsum.photos/seed/scarf/600/600"),
]


DEMO_ROOM_TITLE = "Friday night beauty & tech drop"


async def seed_demo(container: Container) -> Room:
    """The demo host's live room, created on first run and reused while it is live: the one
    seeded, oldest first, not another room someone opened as the demo host meanwhile; or,
    should the demo host have as many rooms live as a host may, the newest of them."""
    service = container.room_service
    live = await container.rooms.list(status=RoomStatus.LIVE, limit=100)
    hosted = [room for room in live if room.host_id == DEMO_HOST.user_id]  # newest first
    seeded = [room for room in hosted if room.title == DEMO_ROOM_TITLE]
    if seeded or len(hosted) >= MAX_LIVE_ROOMS_PER_HOST:
        room = seeded[-1] if seeded else hosted[0]
        if await container.offer_service.open_in_room(room.id):
            return room
    else:
        room = await service.create_room(DEMO_HOST, DEMO_ROOM_TITLE)
        await service.start(room.id, DEMO_HOST)
    # On new products: a product pinned before may have too little stock left for the offer.
    product = await _create_products(container)
    await service.pin(room.id, product.id, DEMO_HOST)
    await _launch_offer(container, room.id, product.id)
    return await service.get_room(room.id)


async def _create_products(container: Container) -> Product:
    """The demo host's products; the first, to pin."""
    products = [
        await container.room_service.create_product(
            DEMO_HOST,
            title=title,
            price=Money(Decimal(price), "USD"),
            stock=stock,
            images=[image],
        )
        for title, price, stock, image in _PRODUCTS
    ]
    return products[0]


async def _launch_offer(container: Container, room_id: str, product_id: str) -> None:
    """A flash offer on the pinned product that runs as long as an offer may (24 hours)."""
    await container.offer_service.launch(
        room_id,
        DEMO_HOST,
        product_id=product_id,
        price=Money(Decimal("19.90"), "USD"),
        quantity=200,
        per_user_limit=2,
        countdown_seconds=0,
        duration_seconds=24 * 3600,
    )


def local_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches a server listening on `host`: an IPv6 address
    in brackets, and every address (0.0.0.0, ::) through the loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"  # a name
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}"


async def announce_demo(container: Container) -> None:
    room = await seed_demo(container)
    settings = container.settings
    secret = settings.signing_secret()
    base = settings.public_url or local_url(settings.host, settings.port)
    ws_base = base.replace("http", "ws", 1)
    host = issue_token(secret, DEMO_HOST.user_id, Role.HOST, name=DEMO_HOST.name, ttl_seconds=86400)
    shopper = issue_token(secret, "demo-shopper", Role.SHOPPER, name="Leo", ttl_seconds=86400)
    moderator = issue_token(secret, "demo-mod", Role.MODERATOR, name="Sam", ttl_seconds=86400)
    lines = [
        "",
        "Liveshop demo is running.",
        f"  room:            {base}/api/v1/rooms/{room.id}",
        f"  live rooms:      {base}/api/v1/rooms?status=live",
        f"  watch (anon):    {ws_base}/ws/rooms/{room.id}",
        f"  shopper socket:  {ws_base}/ws/rooms/{room.id}?token={shopper}",
        f"  host socket:     {ws_base}/ws/rooms/{room.id}?token={host}",
        f"  moderator:       {ws_base}/ws/rooms/{room.id}?token={moderator}",
        f"  health/metrics:  {base}/healthz  {base}/readyz  {base}/metrics",
        "",
        f"  try:  {_this_python()} -m websockets '{ws_base}/ws/rooms/{room.id}?token={shopper}'",
        '        then type {"type": "chat.send", "text": "hello"}',
        '        or claim the offer listed in hello.room.offers: {"type": "offer.claim",',
        '        "offer_id": "...", "idempotency_key": "k1", "shipping_address": {"name": "Leo",',
        '        "line1": "Rua Augusta 1", "city": "Lisboa", "postal_code": "1100-048",',
        '        "country": "PT"}}',
        f"  host token (HTTP):  Authorization: Bearer {host}",
        "",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)


def _this_python() -> str:
    """The interpreter running the demo, which has websockets (uvicorn's): as `.venv/bin/python`
    when it is under the working directory, as scripts/demo runs it."""
    here = Path(sys.executable).absolute()
    try:
        return shlex.quote(str(here.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(here))
