"""In-memory offer and order stores, with the same semantics as the MongoDB ones.

Everything is copied on the way in and out, so a caller mutating an order it holds changes
nothing stored (as with a database). Each method runs without awaiting, so on one event loop
every call is atomic: the compare-and-sets below need no lock.

Figures are counted from the orders when asked, by the same rule as the Mongo store
(`server.domain.figures`).
"""

from __future__ import annotations

import builtins
import copy
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime

from server.domain.errors import (
    Conflict,
    LaunchKeyTaken,
    NotFound,
    ProductOffersChanged,
)
from server.domain.figures import OfferFigures, OrderGroup, figures_of
from server.domain.offers import NO_BUILD, EndReason, FlashOffer
from server.domain.orders import Order, OrderStatus, check_last_move
from server.domain.pages import PageKey, newest_first
from server.domain.times import utc_ms

_Predicate = Callable[[Order], bool]


class MemoryOfferStore:
    def __init__(self) -> None:
        self._offers: dict[str, FlashOffer] = {}
        self._unfinished_ends: set[str] = set()  # offer ids
        self._end_finished_at: dict[str, datetime] = {}
        self._launches: set[tuple[str, int]] = set()  # (product id, nth offer of the product)
        self._launch_keys: dict[tuple[str, str], str] = {}  # (room id, launch key) -> offer id
        self._untold: set[str] = set()  # counted, and the room not yet told

    async def create(
        self, offer: FlashOffer, *, nth_of_product: int, launch_key: str | None = None
    ) -> None:
        if offer.id in self._offers:
            raise Conflict(f"offer {offer.id} exists")
        if (offer.product_id, nth_of_product) in self._launches:
            raise ProductOffersChanged("another offer of this product was launched meanwhile")
        if launch_key is not None:
            if (offer.room_id, launch_key) in self._launch_keys:
                raise LaunchKeyTaken("an offer was launched under this key already")
            self._launch_keys[(offer.room_id, launch_key)] = offer.id
        self._launches.add((offer.product_id, nth_of_product))
        self._offers[offer.id] = replace(offer, counted=False)

    async def launch_counted(self, offer_id: str) -> bool:
        offer = self._offers.get(offer_id)
        if offer is None or offer.ended_at is not None:
            return False
        if not offer.counted:
            self._untold.add(offer_id)
        self._offers[offer_id] = replace(offer, counted=True)
        return True

    async def launch_told(self, offer_id: str) -> None:
        self._untold.discard(offer_id)

    async def untold_launches(
        self, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        found = [
            offer
            for offer_id in self._untold
            if (offer := self._offers[offer_id]).ended_at is None
            and offer.created_at < created_before
        ]
        return sorted(found, key=lambda o: (o.created_at, o.id))[:limit]

    async def uncounted_launches(
        self, created_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        found = [
            o
            for o in self._offers.values()
            if not o.counted and o.ended_at is None and o.created_at < created_before
        ]
        return sorted(found, key=lambda o: (o.created_at, o.id))[:limit]

    async def by_launch_key(self, room_id: str, launch_key: str) -> FlashOffer | None:
        offer_id = self._launch_keys.get((room_id, launch_key))
        return None if offer_id is None else self._offers[offer_id]

    async def of_product(self, product_id: str) -> builtins.list[FlashOffer]:
        offers = [o for o in self._offers.values() if o.product_id == product_id]
        return sorted(offers, key=lambda o: (o.starts_at, o.id))

    async def get(self, offer_id: str) -> FlashOffer:
        try:
            return self._offers[offer_id]
        except KeyError:
            raise NotFound(f"offer {offer_id} not found") from None

    async def get_latest(self, offer_id: str) -> FlashOffer:
        return await self.get(offer_id)  # one process: every read is the latest

    async def open_in_room(self, room_id: str) -> builtins.list[FlashOffer]:
        offers = [o for o in self._offers.values() if o.room_id == room_id and o.ended_at is None]
        return sorted(offers, key=lambda o: (o.starts_at, o.id))

    async def running_ids(self, limit: int) -> builtins.list[str]:
        running = [o for o in self._offers.values() if o.ended_at is None]
        return [o.id for o in sorted(running, key=lambda o: (o.ends_at, o.id))[:limit]]

    async def in_room(self, room_id: str, limit: int) -> builtins.list[FlashOffer]:
        offers = [o for o in self._offers.values() if o.room_id == room_id]
        return sorted(offers, key=lambda o: (o.starts_at, o.id))[-limit:] if limit > 0 else []

    async def record_end(
        self,
        offer_id: str,
        reason: EndReason,
        at: datetime,
        *,
        free_launch_key: bool = False,
        if_uncounted: bool = False,
    ) -> FlashOffer | None:
        offer = await self.get(offer_id)
        if if_uncounted and offer.counted:  # also once ended: the end clears the note
            return None  # its launch counted it first, and answered with it: it keeps its key
        if free_launch_key:
            self._launch_keys = {k: v for k, v in self._launch_keys.items() if v != offer_id}
        if offer.ended_at is not None:
            return None
        ended = replace(offer, ended_at=utc_ms(at), end_reason=reason, counted=True)
        self._offers[offer_id] = ended
        self._untold.discard(offer_id)
        self._unfinished_ends.add(offer_id)
        return ended

    async def unfinished_ends(
        self, limit: int, *, room_id: str | None = None
    ) -> builtins.list[FlashOffer]:
        offers = [self._offers[offer_id] for offer_id in sorted(self._unfinished_ends)]
        return [o for o in offers if room_id in (None, o.room_id)][:limit]

    async def end_finished(self, offer_id: str, at: datetime, *, taken: int | None) -> None:
        if offer_id in self._unfinished_ends:
            self._unfinished_ends.discard(offer_id)
            self._end_finished_at[offer_id] = utc_ms(at)
            self._offers[offer_id] = replace(self._offers[offer_id], taken_at_end=taken)

    async def due_to_settle(
        self, finished_before: datetime, limit: int
    ) -> builtins.list[FlashOffer]:
        due = [
            o
            for o in self._offers.values()
            if o.ended_at is not None
            and o.settled_at is None
            and o.id not in self._unfinished_ends
            and self._end_finished_at.get(o.id, o.ended_at) <= finished_before
        ]
        return sorted(due, key=lambda o: (o.ended_at, o.id))[:limit]

    async def record_settled(self, offer_id: str, at: datetime) -> None:
        offer = await self.get(offer_id)
        if offer.settled_at is None:
            self._offers[offer_id] = replace(offer, settled_at=utc_ms(at))

    async def due_to_end(self, now: datetime, limit: int) -> builtins.list[FlashOffer]:
        due = [o for o in self._offers.values() if o.ended_at is None and o.ends_at <= now]
        return sorted(due, key=lambda o: (o.ends_at, o.id))[:limit]


class MemoryOrderStore:
    def __init__(self) -> None:
        self._orders: dict[str, Order] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._units_to_return: set[str] = set()  # order ids
        self._buyers_untold: set[str] = set()  # order ids
        self._watched: dict[tuple[str, str], datetime] = {}  # (offer id, key) -> until
        self._rebuilt: dict[str, datetime] = {}  # offer id -> until
        self._checked_builds: dict[str, int] = {}  # offer id -> its last stock let in
        self._held_by: dict[str, set[int]] = {}  # order id -> the builds of stocks holding it

    async def create(self, order: Order) -> Order:
        existing = self._by_key.get((order.offer_id, order.idempotency_key))
        if existing is not None:
            return copy.deepcopy(self._orders[existing])
        if order.id in self._orders:
            raise Conflict(f"order {order.id} exists", code="order_exists")
        stored = copy.deepcopy(order)
        self._orders[order.id] = stored
        self._by_key[(order.offer_id, order.idempotency_key)] = order.id
        return copy.deepcopy(stored)

    async def get(self, order_id: str) -> Order:
        return copy.deepcopy(self._stored(order_id))

    async def by_key(self, offer_id: str, idempotency_key: str) -> Order | None:
        order_id = self._by_key.get((offer_id, idempotency_key))
        return None if order_id is None else copy.deepcopy(self._orders[order_id])

    async def list_for_buyer(
        self, buyer_id: str, limit: int, *, after: PageKey | None = None
    ) -> builtins.list[Order]:
        return self._newest(lambda o: o.buyer_id == buyer_id, limit, after)

    async def list_for_room(
        self, room_id: str, limit: int, *, after: PageKey | None = None
    ) -> builtins.list[Order]:
        return self._newest(lambda o: o.room_id == room_id, limit, after)

    async def save_move(
        self, order: Order, *, expected: OrderStatus, units_to_return: bool = False
    ) -> None:
        check_last_move(order, expected)
        stored = self._stored(order.id)
        if stored.status is not expected:
            raise Conflict(
                f"the order is {stored.status} now, not {expected}", code="order_changed"
            )
        stored.status = order.status
        stored.history.append(copy.deepcopy(order.history[-1]))
        self._buyers_untold.add(order.id)
        if units_to_return:
            self._units_to_return.add(order.id)

    async def units_to_return(self, limit: int) -> builtins.list[Order]:
        return [copy.deepcopy(self._orders[i]) for i in sorted(self._units_to_return)[:limit]]

    async def units_returned(self, order_id: str) -> None:
        self._units_to_return.discard(order_id)

    async def note_buyer_untold(self, order_id: str) -> None:
        self._buyers_untold.add(order_id)

    async def buyers_untold(
        self, changed_before: datetime, limit: int, *, skip: Collection[str] = ()
    ) -> builtins.list[Order]:
        noted = [self._orders[i] for i in sorted(self._buyers_untold - set(skip))]
        due = [o for o in noted if o.history[-1].at < changed_before]
        return [copy.deepcopy(o) for o in due[:limit]]

    async def buyer_told(self, order_id: str, moves: int) -> None:
        if len(self._orders[order_id].history) == moves:
            self._buyers_untold.discard(order_id)

    async def due_to_expire(self, now: datetime, limit: int) -> builtins.list[Order]:
        due = [
            o
            for o in self._orders.values()
            if o.status is OrderStatus.PENDING_PAYMENT and o.reservation_expires_at <= now
        ]
        due.sort(key=lambda o: (o.reservation_expires_at, o.id))
        return [copy.deepcopy(o) for o in due[:limit]]

    async def of_offer(self, offer_id: str) -> builtins.list[Order]:
        orders = [o for o in self._orders.values() if o.offer_id == offer_id]
        orders.sort(key=lambda o: (o.created_at, o.id))
        return [copy.deepcopy(o) for o in orders]

    async def count_of_offer(self, offer_id: str) -> int:
        return sum(1 for o in self._orders.values() if o.offer_id == offer_id)

    async def figures_of_offers(self, offer_ids: Sequence[str]) -> builtins.list[OfferFigures]:
        groups: dict[str, list[OrderGroup]] = {offer_id: [] for offer_id in offer_ids}
        for o in self._orders.values():
            if o.offer_id in groups:
                groups[o.offer_id].append(
                    OrderGroup(o.status, o.total.currency, 1, o.quantity, o.total.amount)
                )
        return [figures_of(offer_id, groups[offer_id]) for offer_id in offer_ids]

    async def figures_in_room(self, room_id: str) -> builtins.list[OfferFigures]:
        offer_ids = {o.offer_id for o in self._orders.values() if o.room_id == room_id}
        return await self.figures_of_offers(sorted(offer_ids))

    async def watch_key(self, offer_id: str, idempotency_key: str, until: datetime) -> None:
        watched = (offer_id, idempotency_key)
        self._watched[watched] = max(until, self._watched.get(watched, until))

    async def landed_late(self, now: datetime, keys: int) -> builtins.list[Order]:
        watched = [key for key, until in self._watched.items() if until > now]
        landed = [self._by_key.get(key) for key in random.sample(watched, min(keys, len(watched)))]
        return [copy.deepcopy(self._orders[i]) for i in landed if i is not None]

    async def unwatch_key(self, offer_id: str, idempotency_key: str) -> None:
        self._watched.pop((offer_id, idempotency_key), None)

    async def watched_keys(self, offer_id: str, now: datetime) -> builtins.set[str]:
        return {
            key
            for (offer, key), until in self._watched.items()
            if offer == offer_id and until > now
        }

    async def watch_offer(self, offer_id: str, until: datetime) -> None:
        self._rebuilt[offer_id] = max(until, self._rebuilt.get(offer_id, until))

    async def last_stock_checked(self, offer_id: str) -> int | None:
        return self._checked_builds.get(offer_id)

    async def note_stock_checked(self, offer_id: str, build: int) -> int:
        highest = max(build, self._checked_builds.get(offer_id, build))
        self._checked_builds[offer_id] = highest
        return highest

    async def checked_of_offer(self, offer_id: str) -> dict[str, frozenset[int]]:
        ids = {o.id for o in self._orders.values() if o.offer_id == offer_id}
        return {o: frozenset(builds) for o, builds in self._held_by.items() if o in ids}

    async def unchecked_after_rebuild(
        self, now: datetime, limit: int
    ) -> builtins.list[tuple[Order, int]]:
        watched = {offer_id for offer_id, until in self._rebuilt.items() if until > now}
        unchecked = []
        for o in self._orders.values():
            build = self._checked_builds.get(o.offer_id, NO_BUILD)
            if (
                o.offer_id in watched
                and o.status is OrderStatus.PENDING_PAYMENT
                and max(self._held_by.get(o.id, {NO_BUILD - 1})) != build
            ):
                unchecked.append((copy.deepcopy(o), build))
        return unchecked[:limit]

    async def checked_after_rebuild(self, order_ids: Sequence[str], build: int) -> None:
        for order_id in order_ids:
            self._held_by.setdefault(order_id, set()).add(build)

    def _stored(self, order_id: str) -> Order:
        try:
            return self._orders[order_id]
        except KeyError:
            raise NotFound(f"order {order_id} not found") from None

    def _newest(self, keep: _Predicate, limit: int, after: PageKey | None) -> builtins.list[Order]:
        kept = [order for order in self._orders.values() if keep(order)]
        return [copy.deepcopy(order) for order in newest_first(kept, limit, after)]
