"""Use cases for the catalog and room lifecycle: create, start, end, pin, room settings.

Every change is written to the store first and published to the room's stream only after the
write succeeded, so viewers never hear of a change that was not kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta

from schemas.http import product_summary
from server.domain.chat import clean_blocked_words
from server.domain.errors import Conflict, Forbidden, InvalidInput, LiveshopError, NotFound
from server.domain.identity import Identity, Role
from server.domain.ids import new_id
from server.domain.money import Money
from server.domain.pages import Page, decode_cursor, page_of
from server.domain.products import Product, ProductTrade
from server.domain.rooms import (
    END_TOLD_WITHIN,
    MAX_SLOW_MODE_SECONDS,
    Room,
    RoomStatus,
    can_moderate,
    ensure_can_manage,
    ensure_hosts_own,
    room_has_ended,
)
from server.domain.times import utc_ms, utc_now
from server.ports import ProductStore, RoomEvents, RoomStore

log = logging.getLogger("liveshop.rooms")

Clock = Callable[[], datetime]
StopOffers = Callable[[str], Awaitable[None]]  # a room's id
UNTOLD_ENDS_A_ROUND = 100
# A room whose end fails to be told for a reason other than a store away (a bug) is left
# out for a while by the process that failed: the others are told, and its traceback is
# logged once a minute in each process.
FAILED_TELL_BACKOFF = timedelta(minutes=1)

_SELLERS = frozenset({Role.HOST, Role.ADMIN})


class RoomService:
    def __init__(
        self,
        rooms: RoomStore,
        products: ProductStore,
        events: RoomEvents,
        clock: Clock = utc_now,
        *,
        stop_offers: StopOffers | None = None,
    ) -> None:
        self._rooms = rooms
        self._products = products
        self._events = events
        self._clock = clock
        # The room's flash offers end with its show (OfferService.stop_offers_in_room); None
        # where no offers are sold (tests of rooms alone).
        self._stop_offers = stop_offers
        self._failing_ends: dict[str, datetime] = {}  # room id -> when to try to tell it again

    def _now(self) -> datetime:
        return utc_ms(self._clock())

    # Catalog

    async def create_product(
        self,
        owner: Identity,
        *,
        title: str,
        price: Money,
        stock: int,
        images: list[str],
        trade: ProductTrade | None = None,
    ) -> Product:
        ensure_seller(owner, "create products")
        if stock < 0:
            raise InvalidInput("stock cannot be negative", code="invalid_stock")
        trade = trade or ProductTrade()
        product = Product(
            id=new_id("p"),
            owner_id=owner.user_id,
            title=title,
            price=price,
            stock=stock,
            created_at=self._now(),
            images=list(images),
            description=trade.description,
            sku=trade.sku,
            origin_country=trade.origin_country,
            hs_code=trade.hs_code,
            weight_grams=trade.weight_grams,
            other_prices=list(trade.other_prices),
        )
        await self._products.create(product)
        return product

    async def get_product(self, product_id: str) -> Product:
        return await self._products.get(product_id)

    async def pinned_products(self, rooms: Iterable[Room]) -> dict[str, Product]:
        """The products pinned in these rooms by id; one that has vanished is left out."""
        ids = {room.pinned_product_id for room in rooms if room.pinned_product_id}
        found = await asyncio.gather(*(self._find_product(pid) for pid in ids))
        return {product.id: product for product in found if product is not None}

    async def _find_product(self, product_id: str) -> Product | None:
        try:
            return await self._products.get(product_id)
        except NotFound:
            return None

    # Room lifecycle

    async def create_room(
        self,
        host: Identity,
        title: str,
        scheduled_at: datetime | None = None,
        blocked_words: list[str] | None = None,
    ) -> Room:
        ensure_seller(host, "create rooms")
        room = Room(
            id=new_id("r"),
            host_id=host.user_id,
            title=title,
            status=RoomStatus.SCHEDULED,
            created_at=self._now(),
            scheduled_at=utc_ms(scheduled_at) if scheduled_at is not None else None,
            blocked_words=clean_blocked_words(blocked_words or []),
        )
        await self._rooms.create(room)
        return room

    async def get_room(self, room_id: str) -> Room:
        return await self._rooms.get(room_id)

    async def list_rooms(
        self, status: RoomStatus | None, limit: int = 20, cursor: str | None = None
    ) -> Page[Room]:
        """A page of rooms, newest first; `cursor` is a page's `next_cursor`: the page after
        it (InvalidInput `invalid_cursor` if it is not one)."""
        list_name = f"rooms?status={'' if status is None else status.value}"
        after = None if cursor is None else decode_cursor(cursor, list_name)
        # One more than asked: whether it comes back tells whether there is a next page.
        found = await self._rooms.list(status=status, limit=limit + 1, after=after)
        return page_of(found, limit, list_name)

    async def start(self, room_id: str, who: Identity) -> Room:
        """Go live. Sent again, it answers the live room and tells its viewers again: the first
        try may have stored the start and then failed to tell them (Redis away)."""
        room = await self._rooms.get(room_id)
        ensure_can_manage(room, who)
        if room.status is not RoomStatus.LIVE:
            before = room.status
            room.start(self._now())
            await self._rooms.save(room, expected_status=before)
        await self._events.publish_room_event(room.id, {"type": "room.started"})
        return room

    async def end(self, room_id: str, who: Identity) -> Room:
        """End the show, and with it every flash offer the room runs. Sent again, it answers
        the ended room and does the rest again: the first try may have stored the end and then
        failed to stop an offer or to tell the viewers (Redis away)."""
        room = await self._rooms.get(room_id)
        ensure_can_manage(room, who)
        if room.status is not RoomStatus.ENDED:
            before = room.status
            room.end(self._now())
            # The offers first: should that fail, or this process die, the room is still live
            # and the host's retry ends both. Then again once the end is stored, for a launch
            # that raced it: one stored before this second look is found by it, and one stored
            # after it finds the room ended when it reads the room again (OfferService.launch).
            await self._stop_room_offers(room.id)
            try:
                await self._rooms.save(room, expected_status=before)
            except Conflict:
                # Ended meanwhile by the same end sent twice at once (a double tap, a retry
                # on another process): answered as one sent after it would be.
                room = await self._rooms.get(room_id)
                if room.status is not RoomStatus.ENDED:
                    raise
        await self._tell_end(room.id)
        return room

    async def tell_untold_ends(self) -> int:
        """Tell the rooms of the ends their processes stored but did not tell within
        END_TOLD_WITHIN (ended_at is the ending process's clock: the processes' clocks are
        taken to agree within seconds, NTP). Housekeeping calls it in every process, once a
        second; one process tells each room a period (a gate), though a room whose own
        process was only slow, or whose telling was not noted, may hear `room.ended` twice,
        its sockets closed at the first."""
        now = self._now()
        self._failing_ends = {room: t for room, t in self._failing_ends.items() if t > now}
        untold = await self._rooms.untold_ends(
            now - END_TOLD_WITHIN, UNTOLD_ENDS_A_ROUND, skip=self._failing_ends.keys()
        )
        told = 0
        for room_id in untold:
            if not await self._events.try_gate(
                room_id, "tell_end", END_TOLD_WITHIN.total_seconds()
            ):
                continue
            try:
                await self._tell_end(room_id)
            except LiveshopError:
                # Redis or MongoDB away: the next round tells the others, and this room once
                # its gate is over.
                raise
            except Exception:  # a bug with this room: found by its traceback; tell the others
                log.exception("room_end_tell_failed", extra={"room_id": room_id})
                self._failing_ends[room_id] = now + FAILED_TELL_BACKOFF
                continue
            log.warning("room_end_told_late", extra={"room_id": room_id})
            told += 1
        return told

    async def _tell_end(self, room_id: str) -> None:
        """The rest of an end once it is stored: its offers stopped (once more), the room told."""
        try:
            await self._stop_room_offers(room_id)
        except LiveshopError as error:  # the room has ended: its viewers must hear so
            log.warning("room_offers_not_stopped", extra={"room_id": room_id, "code": error.code})
        await self._events.publish_room_event(room_id, {"type": "room.ended"})
        try:
            await self._rooms.end_told(room_id)
        except LiveshopError as error:  # told: housekeeping tells it again, which does no harm
            log.warning("room_end_told_not_noted", extra={"room_id": room_id, "code": error.code})

    async def _stop_room_offers(self, room_id: str) -> None:
        if self._stop_offers is not None:
            await self._stop_offers(room_id)

    async def pin(self, room_id: str, product_id: str, who: Identity) -> tuple[Room, Product]:
        room = await self._rooms.get(room_id)
        ensure_can_manage(room, who)
        product = await self._products.get(product_id)
        ensure_hosts_own(room, product)
        room.pin(product.id)
        number = await self._rooms.pin(room.id, product.id)
        event = {"type": "showcase.pinned", "product": product_summary(product)}
        # Told in the order stored: of two pins at once, the one stored first and told last
        # is dropped, and the viewers' pin is the stored one.
        await self._events.publish_room_event(room.id, event, topic="showcase", order=number)
        return room, product

    # Room settings: moderators may change them too (the product brief lists slow mode and the
    # keyword filter among a moderator's tools), unlike the lifecycle which is the host's.

    async def set_slow_mode(self, room_id: str, seconds: int, who: Identity) -> Room:
        if not 0 <= seconds <= MAX_SLOW_MODE_SECONDS:
            raise InvalidInput(
                f"slow mode is 0 to {MAX_SLOW_MODE_SECONDS} seconds", code="invalid_slow_mode"
            )
        room = await self._moderated_room(room_id, who)
        await self._rooms.set_slow_mode(room.id, seconds)
        room.slow_mode_seconds = seconds
        await self._events.publish_room_event(
            room.id, {"type": "room.slow_mode", "seconds": seconds}
        )
        return room

    async def set_blocked_words(self, room_id: str, words: list[str], who: Identity) -> Room:
        cleaned = clean_blocked_words(words)
        room = await self._moderated_room(room_id, who)
        await self._rooms.set_blocked_words(room.id, cleaned)
        room.blocked_words = cleaned
        # Viewers never see the list; the processes serving the room reload it.
        await self._events.publish_room_control(room.id, {"type": "settings_changed"})
        return room

    async def _moderated_room(self, room_id: str, who: Identity) -> Room:
        room = await self._rooms.get(room_id)
        if not can_moderate(room.host_id, who):
            raise Forbidden("only the room's host or a moderator can change its settings")
        if room.status is RoomStatus.ENDED:
            raise room_has_ended()
        return room


def ensure_seller(who: Identity, action: str) -> None:
    if who.anonymous or who.role not in _SELLERS:
        raise Forbidden(f"only hosts and admins can {action}")
