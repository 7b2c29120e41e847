"""The signed-in users this process serves: their connections, and one subscription per user to
their private channel (`order.updated` and the like reach a user on all their connections).

A user's connections are served only once that subscription is in place: a second socket
joining while the first one's subscribe is on its way waits for it too. Otherwise it could
claim and miss the `order.updated` that answers its claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from dataclasses import dataclass, field

from channels.broker import Broker
from channels.connection import Connection


@dataclass(slots=True)
class _Watch:
    connections: set[Connection] = field(default_factory=set)
    subscribed: asyncio.Task[None] | None = None

    def needs_subscribe(self) -> bool:
        """No subscribe yet, or the last one failed (the next joiner tries again)."""
        task = self.subscribed
        return task is None or (task.done() and (task.cancelled() or task.exception() is not None))


class UserWatches:
    def __init__(self, broker: Broker, subscriptions: asyncio.Lock) -> None:
        self._broker = broker
        # Shared with the rooms' subscribes: one subscribe or unsubscribe at a time, in order.
        self._subscriptions = subscriptions
        self._watches: dict[str, _Watch] = {}

    def connections(self, user_id: str) -> Collection[Connection]:
        watch = self._watches.get(user_id)
        return () if watch is None else watch.connections

    async def watch(self, user_id: str, conn: Connection) -> None:
        """Count the connection as the user's; return once their channel is subscribed."""
        watch = self._watches.setdefault(user_id, _Watch())
        watch.connections.add(conn)
        if watch.needs_subscribe():
            watch.subscribed = asyncio.create_task(self._subscribe(user_id))
        assert watch.subscribed is not None
        # Shielded: one joiner giving up must not cancel the subscribe the others wait for.
        await asyncio.shield(watch.subscribed)

    async def unwatch(self, user_id: str, conn: Connection) -> None:
        watch = self._watches.get(user_id)
        if watch is None:
            return
        watch.connections.discard(conn)  # discard() may have done so already
        if watch.connections:
            return
        del self._watches[user_id]
        if watch.subscribed is not None:
            # Else a subscribe still on its way would land after the unsubscribe, for good.
            await asyncio.wait([watch.subscribed])
        async with self._subscriptions:
            if user_id not in self._watches:  # unless the user came back meanwhile
                with contextlib.suppress(Exception):
                    await self._broker.unsubscribe_user(user_id)

    def discard(self, conn: Connection) -> None:
        """Stop reaching a connection (it left or was closed); unwatch() follows."""
        watch = self._watches.get(conn.identity.user_id)
        if watch is not None:
            watch.connections.discard(conn)

    async def _subscribe(self, user_id: str) -> None:
        async with self._subscriptions:
            await self._broker.subscribe_user(user_id)
