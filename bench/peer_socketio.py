"""The peer for the fan-out benchmark: python-socketio on uvicorn, rooms shared through Redis.

Clients connect with auth `{"room": ..., "user": ...}` and join that room; a `chat` event is
re-emitted to the room with the same JSON shape as Liveshop's `chat.message` frame. Like
Liveshop, every emit goes through Redis pub/sub (AsyncRedisManager), even with one process.

    python -m bench.peer_socketio --port 8100 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import itertools
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

import socketio
import uvicorn

WS_MAX_MESSAGE_BYTES = 64 * 1024  # as Liveshop's runner


def build_app(redis_url: str) -> Any:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=manager, cors_allowed_origins="*", logger=False
    )
    members: dict[str, tuple[str, dict[str, str]]] = {}
    seq = itertools.count(1)
    epoch = secrets.token_hex(4)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, str] | None) -> bool:
        if not auth or not auth.get("room"):
            return False
        user = {"id": auth.get("user", sid), "name": auth.get("user", sid), "role": "shopper"}
        members[sid] = (auth["room"], user)
        await sio.enter_room(sid, auth["room"])
        return True

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        members.pop(sid, None)

    @sio.on("chat")
    async def chat(sid: str, data: dict[str, Any]) -> None:
        member = members.get(sid)
        if member is None or not isinstance(data, dict) or not str(data.get("text", "")).strip():
            return
        room, user = member
        payload = {
            "seq": next(seq),
            "epoch": epoch,
            "type": "chat.message",
            "id": secrets.token_urlsafe(9),
            "text": str(data["text"]).strip()[:500],
            "user": user,
            "client_id": data.get("client_id"),
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        await sio.emit("chat", payload, room=room)

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="redis://host:port/db")
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        build_app(args.redis),
        host=args.host,
        port=args.port,
        loop=args.loop,
        log_level="warning",
        access_log=False,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        ws_per_message_deflate=False,  # Liveshop's default; the bench's clients never offer it
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )


if __name__ == "__main__":
    main()
