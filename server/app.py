"""The composition root: the one place that builds clients and adapters and wires them up."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from channels.broker import Broker
from channels.broker_memory import MemoryBroker, MemoryBus
from channels.broker_redis import RedisBroker
from channels.direct_send import direct_socket
from channels.endpoint import room_socket
from channels.hub import Hub, HubLimits
from channels.room_state import RoomView
from schemas.commerce import offer_to_wire
from schemas.http import product_summary
from server.adapters.memory_orders import MemoryOfferStore, MemoryOrderStore
from server.adapters.memory_reservations import MemoryStockReservations
from server.adapters.mongo.embedded import EmbeddedMongo
from server.adapters.mongo.offers import MongoOfferStore
from server.adapters.mongo.orders import MongoOrderStore, ensure_order_indexes
from server.adapters.mongo.stores import MongoProductStore, MongoRoomStore, ensure_indexes
from server.adapters.redis_reservations import RedisStockReservations
from server.container import Container
from server.domain.errors import NotFound
from server.domain.orders import countries
from server.domain.postal_codes import postal_code_rule
from server.http import commerce, ops, products, rooms
from server.http.errors import exception_handlers, problem
from server.metrics import Metrics
from server.ports import OfferStore, OrderStore, ProductStore, RoomStore
from server.services.housekeeping import Housekeeper
from server.services.offers import OfferService
from server.services.orders import OrderService
from server.services.room_bans import RoomBans
from server.services.rooms import RoomService
from server.settings import Settings
from server.startup import refusal_fields, refusal_of
from server.stock_port import StockReservations

log = logging.getLogger("liveshop.app")

ROOM_SOCKET_PATH = re.compile(r"^/ws/rooms/(?P<room_id>[^/]+)$")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# At start-up, how long to wait for MongoDB to answer; later, each operation's own timeout
# bounds the wait for a primary too.
STARTUP_WAIT_SECONDS = 10
# Creating indexes that exist is instant; building a new one on a big collection (an upgrade)
# takes a while, and must not fail the start-up.
INDEX_BUILD_SECONDS = 3600


@dataclass(slots=True)
class Backends:
    """Ready-made stores and broker, instead of MongoDB and Redis (tests, experiments)."""

    products: ProductStore
    rooms: RoomStore
    broker: Broker
    offers: OfferStore = field(default_factory=MemoryOfferStore)
    orders: OrderStore = field(default_factory=MemoryOrderStore)
    stock: StockReservations = field(default_factory=MemoryStockReservations)


class RoomSocketShortcut:
    """Hand room websockets straight to their endpoint, everything else to Starlette.

    An idle viewer's task stays suspended for the whole show; going through Starlette's
    middleware and router would keep a dozen coroutine frames alive per viewer for nothing.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            match = ROOM_SOCKET_PATH.match(scope["path"])
            if match is not None:
                scope["app"] = self.app
                scope["path_params"] = {"room_id": match["room_id"]}
                await room_socket(WebSocket(scope, receive, send), direct_socket(send))
                return
            if "websocket.http.response" in scope.get("extensions", {}):
                # Starlette refuses a socket of no route with a close, which the server answers
                # 403 `forbidden`, as if the client lacked a right: not found, as over HTTP.
                await problem(404, "not_found", "no websocket here: /ws/rooms/{room_id}")(
                    scope, receive, send
                )
                return
        elif scope["type"] == "lifespan":
            send = self._refusal_told_once(send)
        await self.app(scope, receive, send)

    def _refusal_told_once(self, send: Send) -> Send:
        """Starlette hands uvicorn a failed start-up's traceback to log; a refusal has been
        logged as one line (`startup_refused`), and the traceback would bury it."""

        async def send_without_traceback(message: Message) -> None:
            refused = getattr(self.state, "startup_refused", None) is not None
            if message["type"] == "lifespan.startup.failed" and refused:
                message = {"type": message["type"], "message": ""}
            await send(message)

        return send_without_traceback


OnReady = Callable[[Container], Awaitable[None]]


def create_app(
    settings: Settings | None = None,
    *,
    backends: Backends | None = None,
    on_ready: OnReady | None = None,
) -> RoomSocketShortcut:
    settings = settings or Settings()
    settings.check_safe()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # Read now, not in the first claims: babel's country list (~15 ms), and each
            # country's postal codes (~100 ms in all; China's alone held a claim up to 30 ms).
            for country in countries():
                postal_code_rule(country)
            try:
                chosen = backends or await _real_backends(settings, stack)
                redis_checks = None
                if isinstance(chosen.stock, RedisStockReservations):
                    redis_checks = chosen.stock.checks
                    await redis_checks.at_start_up()  # RedisNotAllowed refuses the start-up
                container = _assemble(settings, chosen, metrics)
                container.redis_checks = redis_checks
                if redis_checks is not None:
                    metrics.stock_redis_refused.set_function(
                        lambda: float(redis_checks.refusal is not None)
                    )
                await container.hub.start()
            except Exception as exc:
                refusal = refusal_of(exc)
                if refusal is not None:
                    log.error("startup_refused", extra=refusal_fields(exc))
                    # Told: RoomSocketShortcut drops the traceback, the command picks the exit.
                    app.state.startup_refused = refusal
                raise
            stack.push_async_callback(container.hub.close)
            stack.push_async_callback(container.offer_service.close)  # runs before the hub's
            stack.push_async_callback(container.order_service.close)  # and before the stores'

            def served_offer_ids() -> set[str]:
                return {
                    *container.hub.open_offer_ids(),
                    *container.order_service.recently_claimed_offers(),
                }

            housekeeper = Housekeeper(
                container.offer_service,
                container.order_service,
                served_offer_ids,
                metrics=metrics,
                rooms=container.room_service,
                check_redis=None if redis_checks is None else redis_checks.run_if_due,
            )
            housekeeper.start()
            stack.push_async_callback(housekeeper.stop)
            app.state.container = container
            app.state.metrics = metrics
            if on_ready is not None:
                await on_ready(container)
            log.info("liveshop_ready", extra={"broker": type(chosen.broker).__name__})
            yield

    # Commerce first: the router tries routes in order, and claims are the hot path. A path
    # with a slash too many is not found, as any other: no redirect, which Starlette would
    # build from the client's own Host header, with a body that is no problem+json.
    api = Router(
        routes=[*commerce.routes(), *products.routes(), *rooms.routes(), *ops.api_routes()],
        redirect_slashes=False,
    )
    routes: list[BaseRoute] = [*ops.routes(), Mount("/api/v1", app=api)]
    if STATIC_DIR.is_dir():
        routes.append(Mount("/", app=StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers)
    app.router.redirect_slashes = False
    app.state.settings = settings
    return RoomSocketShortcut(app)


async def _real_backends(settings: Settings, stack: AsyncExitStack) -> Backends:
    mongodb_url = settings.mongodb_url
    if mongodb_url is None:
        embedded = EmbeddedMongo(settings.data_dir / "mongodb")
        mongodb_url = await embedded.start()
        stack.push_async_callback(embedded.stop)
        # "Starts and keeps": a mongod of ours that dies is started again, not left for good.
        embedded.keep_running()
    # Every operation is bounded, all in (finding a primary, the round trip, the server's
    # work): a database that is down, failing over or frozen answers "try again" in seconds.
    timeout = settings.mongodb_timeout_seconds
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url,
        tz_aware=True,
        timeoutMS=int(timeout * 1000),
        # Also what the client does outside an operation: closing it ends its sessions on a
        # server it must find first (30 s by default, the whole shutdown held when it is gone).
        serverSelectionTimeoutMS=int(timeout * 1000),
    )
    stack.push_async_callback(client.close)
    db = client[settings.mongodb_database]
    with pymongo.timeout(STARTUP_WAIT_SECONDS):  # a wrong URL fails the start-up, in seconds
        await db.command("ping")
    with pymongo.timeout(INDEX_BUILD_SECONDS):  # building an index on a big collection is slow
        await ensure_indexes(db)
        await ensure_order_indexes(db)
    broker: Broker
    stock: StockReservations
    if settings.redis_url:
        broker = RedisBroker(
            settings.redis_url,
            history_events=settings.history_events,
            history_seconds=settings.history_seconds,
        )
        # Checked by the lifespan, whoever built it: at start-up, then by housekeeping.
        redis_stock = RedisStockReservations(settings.redis_url)
        stack.push_async_callback(redis_stock.close)
        stock = redis_stock
    else:
        broker = MemoryBroker(MemoryBus(settings.history_events, settings.history_seconds))
        stock = MemoryStockReservations()
    orders = MongoOrderStore(db, write_seconds=timeout)
    stack.push_async_callback(orders.close)  # before the client closes: runs first
    return Backends(
        MongoProductStore(db), MongoRoomStore(db), broker, MongoOfferStore(db), orders, stock
    )


def _assemble(settings: Settings, backends: Backends, metrics: Metrics) -> Container:
    async def load_room(room_id: str) -> RoomView:
        room = await backends.rooms.get(room_id)
        pinned = None
        if room.pinned_product_id is not None:
            try:
                pinned = product_summary(await backends.products.get(room.pinned_product_id))
            except NotFound:
                pinned = None
        offers = [offer_to_wire(o, stock) for o, stock in await offer_service.open_in_room(room_id)]
        return RoomView(room, pinned, await backends.rooms.mutes(room_id), offers)

    async def load_settings(room_id: str) -> RoomView:
        return RoomView(
            await backends.rooms.get(room_id),
            mutes=await backends.rooms.mutes(room_id),
            banned=await backends.rooms.banned_users(room_id),
        )

    limits = HubLimits(
        send_queue_frames=settings.send_queue_frames,
        counter_interval=settings.counter_interval,
        chat_burst=settings.chat_burst,
        chat_per_second=settings.chat_per_second,
        batch_seconds=settings.batch_window_ms / 1000,
    )
    hub = Hub(
        backends.broker,
        load_room,
        metrics,
        limits,
        backends.rooms.keep_counters,
        load_settings=load_settings,
    )
    offer_service = OfferService(
        backends.offers, backends.orders, backends.rooms, backends.products, backends.stock, hub
    )
    order_service = OrderService(
        backends.offers,
        backends.orders,
        backends.products,
        backends.stock,
        offer_service,
        hub.send_private,
        rooms=backends.rooms,
        bans=RoomBans(backends.rooms),
    )
    return Container(
        settings,
        backends.rooms,
        RoomService(
            backends.rooms, backends.products, hub, stop_offers=offer_service.stop_offers_in_room
        ),
        hub,
        offer_service,
        order_service,
    )
