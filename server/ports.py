"""The roles the use cases depend on, one Protocol each (the reservation store's: stock_port.py).
Adapters implement them."""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from server.domain.figures import OfferFigures
from server.domain.offers import (
    EndReason,
    FlashOffer,
)
from server.domain.orders import Order, OrderStatus
from server.domain.pages import PageKey
from server.domain.products import Product
from server.domain.rooms import Room, RoomStatus


class ProductStore(Protocol):
    async def create(self, product: Product) -> None: ...

    async def get(self, product_id: str) -> Product:
        """The product, or NotFound."""
        ...

    async def set_stock(self, product_id: str, stock: int, *, launches: int) -> Product:
        """The product with its stock set to `stock`, if `launches` offers are still all that
        were counted against its stock (the caller read their bookings); else
        ProductOffersChanged. NotFound for an unknown product."""
        ...

    async def count_launch(self, product_id: str, *, at_least: int) -> bool:
        """Count an offer launched: False, counting nothing, if the product's stock is below
        `at_least`, the units its offers need with it (a stock count lowered it meanwhile)."""
        ...


class RoomStore(Protocol):
    async def create(self, room: Room) -> None: ...

    async def get(self, room_id: str) -> Room:
        """The room, or NotFound."""
        ...

    async def list(
        self, *, status: RoomStatus | None, limit: int, after: PageKey | None = None
    ) -> builtins.list[Room]:
        """Up to `limit` rooms, newest first, after `after` (pages.comes_after): a page."""
        ...

    async def save(self, room: Room, *, expected_status: RoomStatus) -> None:
        """Write the room's lifecycle if its stored status is still `expected_status`, else
        Conflict. The pinned product and the moderation settings (slow mode, blocked words)
        have their own setters and are left as stored, so a stale read never undoes them. A
        room going live takes one of its host's MAX_LIVE_ROOMS_PER_HOST places, atomically
        (Conflict `too_many_live_rooms` when none is free), and gives it back as it ends."""
        ...

    async def pin(self, room_id: str, product_id: str) -> int:
        """Pin the product, unless the room has ended (Conflict `invalid_room_state`); the
        pin's number, higher than every earlier pin's of the room."""
        ...

    async def untold_ends(
        self, ended_by: datetime, limit: int, *, skip: Collection[str] = ()
    ) -> builtins.list[str]:
        """The ids of rooms that ended by `ended_by` and whose end is still untold
        (`end_told`), but those in `skip`; `limit` at most."""
        ...

    async def end_told(self, room_id: str) -> None:
        """Note that the room has been told of its end."""
        ...

    async def set_slow_mode(self, room_id: str, seconds: int) -> None: ...

    async def keep_counters(self, room_id: str, likes: int, peak_viewers: int) -> tuple[int, int]:
        """Raise the room's kept likes and peak viewers to these, never lower them: every
        process serving the room keeps them, each as it last read them. The kept figures
        after (0, 0 for a room that does not exist)."""
        ...

    async def set_blocked_words(self, room_id: str, words: builtins.list[str]) -> None: ...

    async def ban(self, room_id: str, user_id: str, *, by: str, at: datetime) -> None: ...

    async def unban(self, room_id: str, user_id: str) -> bool:
        """Lift the user's ban from the room; whether there was one to lift."""
        ...

    async def is_banned(self, room_id: str, user_id: str) -> bool: ...

    async def banned_users(self, room_id: str) -> frozenset[str]:
        """Everyone banned from the room (claims read it at most once a second a process)."""
        ...

    async def mute(self, room_id: str, user_id: str, *, until: datetime, at: datetime) -> None:
        """Mute the user in the room until `until`, in place of any earlier mute of theirs, and
        drop the mutes over by `at`. Conflict `too_many_mutes` when MAX_MUTES others still run;
        NotFound for an unknown room."""
        ...

    async def unmute(self, room_id: str, user_id: str, *, at: datetime) -> bool:
        """Lift the user's mute in the room; whether one still ran at `at`. NotFound for an
        unknown room."""
        ...

    async def mutes(self, room_id: str) -> Mapping[str, datetime]:
        """Users muted in the room and until when (expired entries may be included)."""
        ...

    async def ping(self) -> None:
        """Raise when the store is unreachable (readiness)."""
        ...


class RoomEvents(Protocol):
    """Publishes one event to a room's ordered stream (every viewer on every process)."""

    async def publish_room_event(
        self,
        room_id: str,
        event: dict[str, Any],
        *,
        topic: str | None = None,
        last: bool = False,
        order: int | None = None,
    ) -> int:
        """Publish and return the event's sequence number; 0 when `topic` was closed by an
        earlier event with `last=True`, or has had an event of an `order` as high (see
        channels.broker.Broker.publish)."""
        ...

    async def publish_room_control(self, room_id: str, control: dict[str, Any]) -> None:
        """Tell every process serving the room something viewers do not see (settings changed)."""
        ...

    async def try_gate(self, room_id: str, name: str, seconds: float) -> bool:
        """True for exactly one caller per room, name and period of `seconds`, across every
        process: what keeps a cadence room-wide rather than per process."""
        ...


class OfferStore(Protocol):
    async def create(
        self, offer: FlashOffer, *, nth_of_product: int, launch_key: str | None = None
    ) -> None:
        """Store the offer, not yet counted (`FlashOffer.counted`), as its product's
        `nth_of_product` offer (1 for the first): Conflict when the id exists,
        ProductOffersChanged when another offer took that place first (a launch of the same
        product that raced this one: its stock must be checked again), LaunchKeyTaken when an
        offer of the room has this `launch_key` already."""
        ...

    async def launch_counted(self, offer_id: str) -> bool:
        """Note the offer counted against its product's stock, unless it has ended: whether it
        had not (a second call changes nothing). Counted, it is untold until `launch_told`."""
        ...

    async def launch_told(self, offer_id: str) -> None:
        """Note that the room has been told the offer started (`offer.started`)."""
        ...

    async def untold_launches(
        self, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        """Offers that have not ended, created before `created_before`, that their launch
        counted but never told the room of: it died in between. (Offers stored by versions
        that did not note it count as told.)"""
        ...

    async def uncounted_launches(
        self, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        """Offers that have not ended, created before `created_before`, that their launch
        never counted: it died between storing and counting them."""
        ...

    async def by_launch_key(self, room_id: str, launch_key: str) -> FlashOffer | None:
        """The room's offer launched under this key, if any."""
        ...

    async def of_product(self, product_id: str) -> builtins.list[FlashOffer]:
        """Every offer of the product, ended or not."""
        ...

    async def get(self, offer_id: str) -> FlashOffer:
        """The offer, or NotFound."""
        ...

    async def get_latest(self, offer_id: str) -> FlashOffer:
        """As `get`, and as of every write acknowledged before the call, also during a
        failover (never from a primary already replaced): for a decision that must see an end
        recorded by another process."""
        ...

    async def open_in_room(self, room_id: str) -> builtins.list[FlashOffer]:
        """Offers of the room that have not ended (scheduled or running), by start time."""
        ...

    async def in_room(self, room_id: str, limit: int) -> builtins.list[FlashOffer]:
        """The room's latest `limit` offers, ended or not, by start time (oldest first)."""
        ...

    async def running_ids(self, limit: int) -> builtins.list[str]:
        """The ids of up to `limit` offers that have not ended, those ending first first (in
        no set order among those ending together)."""
        ...

    async def record_end(
        self,
        offer_id: str,
        reason: EndReason,
        at: datetime,
        *,
        free_launch_key: bool = False,
        if_uncounted: bool = False,
    ) -> FlashOffer | None:
        """End the offer exactly once: the ended offer, or None when it had already ended.
        The same write notes the end as unfinished (see `unfinished_ends`), clears the note
        that its launch has yet to count it, and with `free_launch_key` frees the offer's
        launch key (also when it had ended already): its launch was refused, and sent again
        with that key is tried afresh. With `if_uncounted`, only an offer its launch has not
        counted (None otherwise): of a withdrawal and a launch's `launch_counted`, the first
        wins."""
        ...

    async def unfinished_ends(
        self, limit: int, *, room_id: str | None = None
    ) -> builtins.list[FlashOffer]:
        """Ended offers (of the room, with `room_id`) whose stock may still be open or whose
        room may not have heard of the end: their ender is at it, or failed or died before
        `end_finished`."""
        ...

    async def end_finished(self, offer_id: str, at: datetime, *, taken: int | None) -> None:
        """Clear the note `record_end` left, noting when and the units the offer had `taken`
        when its stock stopped (None if the stock was lost): the stock is stopped, the room
        told. Once: an end finished again (a host's repeated stop) keeps its first figures."""
        ...

    async def due_to_settle(
        self, finished_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        """Ended offers not yet settled whose end was finished at or before `finished_before`
        (an offer ended before ends were noted counts as finished when it ended)."""
        ...

    async def record_settled(self, offer_id: str, at: datetime) -> None:
        """Note the offer settled; a second call changes nothing."""
        ...

    async def due_to_end(self, now: datetime, limit: int) -> builtins.list[FlashOffer]:
        """Offers not yet ended whose end time has passed (any process may end them)."""
        ...


class OrderStore(Protocol):
    """Orders and their history. Every write changes one document and nothing else; the offer's
    figures are counted from the orders when asked (`server.domain.figures`)."""

    async def create(self, order: Order) -> Order:
        """Store a new order, idempotently: when an order with the same offer and idempotency
        key exists, nothing is written and that stored order is returned."""
        ...

    async def get(self, order_id: str) -> Order:
        """The order, or NotFound."""
        ...

    async def by_key(self, offer_id: str, idempotency_key: str) -> Order | None: ...

    async def list_for_buyer(
        self, buyer_id: str, limit: int, *, after: PageKey | None = None
    ) -> builtins.list[Order]:
        """The buyer's orders, newest first by (created_at, id); with `after`, only those that
        sort after that key (`server.domain.pages.comes_after`): the next page."""
        ...

    async def list_for_room(
        self, room_id: str, limit: int, *, after: PageKey | None = None
    ) -> builtins.list[Order]:
        """The room's orders, newest first, paged as `list_for_buyer`."""
        ...

    async def save_move(
        self, order: Order, *, expected: OrderStatus, units_to_return: bool = False
    ) -> None:
        """Persist the order's new status and its last history entry if its stored status is
        still `expected`, else Conflict (code `order_changed`). The same write notes the buyer as
        not yet told of the change, until `buyer_told`, so that a process dying before its
        `order.updated` leaves the change to be told by another. With `units_to_return`, it
        also notes that the order's units are still to go back to the offer, until
        `units_returned`: a give-back that fails, or never runs, is found again."""
        ...

    async def units_to_return(self, limit: int) -> builtins.list[Order]:
        """Orders whose units are noted as still to go back to their offer."""
        ...

    async def units_returned(self, order_id: str) -> None:
        """Clear the order's note that its units are to go back (they have)."""
        ...

    async def note_buyer_untold(self, order_id: str) -> None:
        """Note that the buyer could not be told of the order's last change (`order.updated`
        found no broker), until `buyer_told`."""
        ...

    async def buyers_untold(
        self, changed_before: datetime, limit: int, *, skip: Collection[str] = ()
    ) -> builtins.list[Order]:
        """Orders whose buyer is noted as not told of their last change, made (the last entry
        of their history) before `changed_before`; but those of ids in `skip`."""
        ...

    async def buyer_told(self, order_id: str, moves: int) -> None:
        """Clear the note, if the order still has `moves` history entries: the buyer was told
        of it as it stood then (a change made since keeps its own note)."""
        ...

    async def due_to_expire(self, now: datetime, limit: int) -> builtins.list[Order]:
        """Orders pending payment whose reservation has run out, oldest first."""
        ...

    async def of_offer(self, offer_id: str) -> builtins.list[Order]:
        """Every order of the offer, oldest first: what a rebuild of the offer's reservations
        starts from (those that hold stock count against it; the others keep their keys, so a
        retried claim still finds its order)."""
        ...

    async def count_of_offer(self, offer_id: str) -> int:
        """How many orders the offer has, read as `of_offer` reads them: orders are never
        deleted, so a count above an earlier read's says orders were written since."""
        ...

    async def figures_of_offers(self, offer_ids: Sequence[str]) -> builtins.list[OfferFigures]:
        """Each offer's figures as its orders stand now (`figures_of`), in the order asked."""
        ...

    async def figures_in_room(self, room_id: str) -> builtins.list[OfferFigures]:
        """The figures of every offer of the room that has orders, in no given order."""
        ...

    async def watch_key(self, offer_id: str, idempotency_key: str, until: datetime) -> None:
        """Note, until `until`, that the key's reservation is given back with no order under
        it, so that an order written under it later is found by any process (`landed_late`).
        Noted again, the later `until` stands."""
        ...

    async def landed_late(self, now: datetime, keys: int) -> builtins.list[Order]:
        """Orders written under the keys watched until after `now`: under all of them, or, when
        more than `keys` are watched, under `keys` of them picked at random each call."""
        ...

    async def unwatch_key(self, offer_id: str, idempotency_key: str) -> None:
        """Forget the key's note (its late order is settled)."""
        ...

    async def watched_keys(self, offer_id: str, now: datetime) -> builtins.set[str]:
        """The offer's keys watched until after `now` (`watch_key`): those whose units the
        reaper gave back, and whose orders, should they land, are not yet settled."""
        ...

    async def watch_offer(self, offer_id: str, until: datetime) -> None:
        """Note, until `until`, that a rebuild of the offer's stock is about to read its orders:
        an order written after that read holds units the rebuilt stock knows nothing of, and
        `unchecked_after_rebuild` finds it. Noted again, the later `until` stands."""
        ...

    async def last_stock_checked(self, offer_id: str) -> int | None:
        """The highest build noted `note_stock_checked` for the offer, None if none was."""
        ...

    async def note_stock_checked(self, offer_id: str, build: int) -> int:
        """Note that the offer's stock of this build (see ClaimResult), rebuilt and checked,
        is about to let claims in: orders of that build are claims on it. The highest build
        noted stands, and is answered."""
        ...

    async def checked_of_offer(self, offer_id: str) -> dict[str, frozenset[int]]:
        """The offer's orders noted `checked_after_rebuild`: order id -> the builds of every
        stock noted holding it."""
        ...

    async def unchecked_after_rebuild(
        self, now: datetime, limit: int
    ) -> builtins.list[tuple[Order, int]]:
        """Orders pending payment of the offers watched until after `now` that are not noted
        held by the offer's last stock checked (`note_stock_checked`), each with that stock's
        build (NO_BUILD before any); `limit` at most."""
        ...

    async def checked_after_rebuild(self, order_ids: Sequence[str], build: int) -> None:
        """Note that these orders hold their units in the stock of this build (as its
        rebuilder counted them, or as found attached since), with the builds of the stocks
        noted holding them before. `unchecked_after_rebuild` goes by the highest."""
        ...
