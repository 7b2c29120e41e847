"""The websocket endpoint `/ws/rooms/{room_id}`: starlette glue for the hub and the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from datetime import UTC, datetime

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from channels.broker import encode_body
from channels.close_codes import CloseCode
from channels.connection import Connection
from channels.direct_send import DirectSocket
from channels.errors import Banned, Draining, RoomEnded
from channels.hub import Hub
from channels.protocol import (
    AddLikes,
    Claim,
    Close,
    Command,
    Lift,
    Limits,
    Publish,
    Reply,
    RoomSession,
    SpacedTurn,
    StoreBan,
    StoreMute,
    StoreSlowMode,
    Turn,
    error_frame,
)
from channels.room_state import LocalRoom
from schemas.commerce import order_to_wire
from server.auth import verify_socket_token
from server.container import Container
from server.domain.errors import (
    LiveshopError,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from server.domain.identity import Identity
from server.metrics import ClaimOutcomes

log = logging.getLogger("liveshop.ws")

_ROOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EPOCH = re.compile(r"^[0-9a-f]{1,32}$")
# ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
_SINCE = re.compile(r"[0-9]{1,18}")
OUTCOMES = ("accepted", "rejected")  # of a client frame, as counted in the metrics


async def room_socket(websocket: WebSocket, direct: DirectSocket | None = None) -> None:
    """Serve one viewer; `direct` is the same socket for writes that skip ASGI, when the server
    offers it (channels/direct_send.py)."""
    container: Container = websocket.app.state.container
    hub = container.hub
    await websocket.accept()
    room_id = str(websocket.path_params.get("room_id", ""))
    try:
        identity, token_expires = _identity(websocket, container)
        if not _ROOM_ID.match(room_id):
            raise NotFound("no such room")
        answers_to_bans = not (identity.anonymous or identity.staff)
        if answers_to_bans and await container.rooms.is_banned(room_id, identity.user_id):
            raise Banned("you are banned from this room")
        since, epoch = _cursor(websocket)
        batched = websocket.query_params.get("batch") in ("1", "true")
        conn, room = await hub.join(
            room_id,
            identity,
            websocket,
            since=since,
            epoch=epoch,
            batched=batched,
            direct=direct,
            token_expires=token_expires,
        )
    except LiveshopError as error:
        # Already closed when a reset sent the room's viewers away while this one joined
        # (WebSocketDisconnected), or by the client, gone before hearing why (WebSocketDisconnect):
        # neither is the server's error to log.
        with contextlib.suppress(WebSocketDisconnected, WebSocketDisconnect):
            await websocket.close(_close_code(error), error.message[:120])
        return
    conn.endpoint = asyncio.current_task()
    log.info("ws_joined", extra={"room_id": room_id, "conn": conn.conn_id})
    try:
        await _serve(websocket, container, hub, conn, room)
    except asyncio.CancelledError:
        if not conn.evicted:
            raise
        # The hub gave up on a peer that reads nothing, not even a close frame: this socket
        # is done, the server is not shutting down.
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
    finally:
        await hub.leave(conn)
        log.info("ws_left", extra={"room_id": room_id, "conn": conn.conn_id})


async def _serve(
    websocket: WebSocket,
    container: Container,
    hub: Hub,
    conn: Connection,
    room: LocalRoom,
) -> None:
    settings = container.settings
    session = RoomSession(
        conn.identity,
        room,
        token_expires=conn.token_expires,
        limits=Limits(
            max_frame_bytes=settings.max_frame_bytes, max_bad_frames=settings.max_bad_frames
        ),
        new_id=lambda: secrets.token_urlsafe(9),
    )
    # Looked up once: a labels() call per frame costs more than the count itself.
    frames_in = {outcome: hub.metrics.frames_in.labels(outcome=outcome) for outcome in OUTCOMES}
    while not conn.closed:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        if conn.closing:
            continue  # banned, or the room ended: what it still sends is dropped, unanswered
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        started = time.perf_counter()
        commands, ref = session.handle(raw, mono=time.monotonic(), now=datetime.now(UTC))
        refused = _error_code(commands)
        frames_in["accepted" if refused is None else "rejected"].inc()
        if refused is not None and session.last_type == "offer.claim":
            hub.metrics.ws_claims.record(refused, started)  # refused before reaching the service
        conn.carrying_out = True
        try:
            await _carry_out(commands, ref, container, hub, conn, room)
        finally:
            conn.answered()


async def _carry_out(
    commands: list[Command],
    ref: str | None,
    container: Container,
    hub: Hub,
    conn: Connection,
    room: LocalRoom,
) -> None:
    """Carry out one frame's commands in order; the first that fails is answered with an
    `error` frame carrying the frame's `ref`, and the rest are dropped."""
    for command in commands:
        try:
            if isinstance(command, Reply):
                conn.push(encode_body(command.frame))
            elif isinstance(command, Publish):
                await hub.publish_room_event(room.room_id, command.event)
            elif isinstance(command, SpacedTurn):
                spaced = await hub.broker.take_spaced_turn(
                    room.room_id, command.name, command.seconds
                )
                if not spaced:
                    raise RateLimited(command.refusal, code=command.code)
            elif isinstance(command, Turn):
                # The broker's failures are Unavailable already: answered, not logged as bugs.
                taken = await hub.broker.take_turn(
                    room.room_id, command.name, command.burst, command.per_second
                )
                if not taken:
                    raise RateLimited(command.refusal, code=command.code)
            elif isinstance(command, AddLikes):
                hub.add_likes(room, command.count)
            elif isinstance(command, Claim):
                await _claim(command, container, hub.metrics.ws_claims, conn, room)
            elif isinstance(command, StoreMute):
                await container.rooms.mute(
                    room.room_id, command.user_id, until=command.until, at=command.at
                )
            elif isinstance(command, StoreBan):
                await container.rooms.ban(
                    room.room_id, command.user_id, by=conn.identity.user_id, at=command.at
                )
            elif isinstance(command, Lift):
                await _lift(command, container, room)
            elif isinstance(command, StoreSlowMode):
                await container.rooms.set_slow_mode(room.room_id, command.seconds)
            elif isinstance(command, Close):
                conn.close_after_flush(command.code, command.reason)
        except LiveshopError as error:
            # Most claims in a flash sale are refused: drop the traceback, whose frames hold
            # the error itself, a cycle only the garbage collector would free.
            error.__traceback__ = None
            conn.push(encode_body(error_frame(error, ref)))
            return
        except Exception:
            log.exception("ws_command_failed", extra={"room_id": room.room_id})
            conn.push(encode_body(error_frame(Unavailable("try again shortly"), ref)))
            return


async def _lift(command: Lift, container: Container, room: LocalRoom) -> None:
    """Lift the ban or mute; with none to lift, the moderator hears so and the room nothing (an
    unban of someone never banned would tell every viewer they had been)."""
    # Besides the store, what the room heard: only `user.unmuted` or `user.unbanned` changes
    # each process's copy of the mutes (which chat reads) and of the bans heard lately (which
    # joins read too). A lift stored but never told (Redis away as it was published), or told
    # before a racing mute's or ban's event, still holds the user there: sent again, it is told.
    # (Two lifts at once on two processes may then both be told: the room hears the same twice.)
    user_id = command.user_id
    if command.what == "ban":
        lifted = await container.rooms.unban(room.room_id, user_id) or room.banned_lately(user_id)
        state = "banned"
    else:
        lifted = await container.rooms.unmute(room.room_id, user_id, at=command.at)
        lifted = lifted or room.muted_until(user_id, command.at) is not None
        state = "muted"
    if not lifted:
        raise NotFound(f"{user_id} is not {state} in this room", code=f"not_{state}")


async def _claim(
    command: Claim,
    container: Container,
    claims: ClaimOutcomes,
    conn: Connection,
    room: LocalRoom,
) -> None:
    """A new order reaches the buyer as `order.updated` on every connection; a retried claim
    gets its order back here, since nothing changed for the others. Errors are the caller's to
    answer, counted here. A socket hears the orders it claimed even if its token expires
    before they are written (`Connection.hears`)."""
    started = time.perf_counter()
    conn.note_claim(command.frame.offer_id, command.frame.idempotency_key)
    try:
        order, created = await container.order_service.claim(
            command.frame.offer_id,
            conn.identity,
            quantity=command.frame.quantity,
            idempotency_key=command.frame.idempotency_key,
            address=command.frame.shipping_address.to_address(),
            room_id=room.room_id,
        )
    except LiveshopError as error:
        claims.record(error.code, started)
        raise
    claims.record("order" if created else "replayed", started)
    # A new order's `order.updated` comes back through the broker, after this socket has
    # closed if it is leaving (a drain): it hears it here (a second copy would do no harm).
    if not created or conn.leaving:
        conn.push(encode_body({"type": "order.updated", "order": order_to_wire(order)}))


def _identity(websocket: WebSocket, container: Container) -> tuple[Identity, float | None]:
    """Who the socket is, and when its token expires (epoch seconds; None: an anonymous
    viewer)."""
    tokens = websocket.query_params.getlist("token")
    if len(tokens) > 1:  # which one counts would be the parser's guess, as with two headers
        raise Unauthorized("one `token` at most", code="invalid_token")
    if not tokens:
        return Identity.anonymous_viewer(secrets.token_hex(6)), None
    # An empty one is refused as any bad token (HTTP refuses an empty bearer too): a client
    # whose token went missing hears it, rather than watch as a viewer refused every tap.
    return verify_socket_token(container.settings.signing_secret(), tokens[0])


def _cursor(websocket: WebSocket) -> tuple[int | None, str | None]:
    """`since` and `epoch` from the query; anything unusable means "nothing to recover"."""
    since_raw, epoch = websocket.query_params.get("since"), websocket.query_params.get("epoch")
    if since_raw is None or not _SINCE.fullmatch(since_raw):
        return None, None
    if epoch is None or not _EPOCH.match(epoch):
        return None, None
    return int(since_raw), epoch


def _close_code(error: LiveshopError) -> int:
    if isinstance(error, Unauthorized):
        return CloseCode.UNAUTHORIZED
    if isinstance(error, Banned):
        return CloseCode.BANNED
    if isinstance(error, NotFound):
        return CloseCode.ROOM_NOT_FOUND
    if isinstance(error, RoomEnded):
        return CloseCode.ROOM_ENDED
    if isinstance(error, Draining):
        return CloseCode.GOING_AWAY
    if isinstance(error, Unavailable):
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.INTERNAL_ERROR


def _error_code(commands: list[Command]) -> str | None:
    """The code of the `error` a frame was answered with, None if it was not refused."""
    for command in commands:
        if isinstance(command, Reply) and command.frame.get("type") == "error":
            return str(command.frame["code"])
    return None
