"""The stored forms of offers and orders, and the way back, for the Mongo offer and order stores.

Money is Decimal128 plus a currency, never a float; datetimes are stored UTC and come back
tz-aware through the collection's codec options; the history is an array of transitions and
the shipping address a subdocument. A field is written even when null, so queries such as
"not ended" are one indexed equality.
"""

from __future__ import annotations

from server.adapters.mongo.stores import Document, money_doc, money_from
from server.domain.offers import EndReason, FlashOffer
from server.domain.orders import Address, Order, OrderStatus, Transition

# Set with an offer's end: the units the offer had taken when its stock stopped
# (FlashOffer.taken_at_end).
TAKEN_AT_END = "taken_at_end"
# Set on an offer as its launch stores it, until the launch counts it (FlashOffer.counted).
LAUNCH_TO_COUNT = "launch_to_count"


def offer_doc(offer: FlashOffer) -> Document:
    return {
        "_id": offer.id,
        "room_id": offer.room_id,
        "product_id": offer.product_id,
        "host_id": offer.host_id,
        "price": money_doc(offer.price),
        "quantity": offer.quantity,
        "per_user_limit": offer.per_user_limit,
        "starts_at": offer.starts_at,
        "ends_at": offer.ends_at,
        "created_at": offer.created_at,
        # Always present (null until the end), so "not ended" is one indexed equality.
        "ended_at": offer.ended_at,
        "end_reason": None if offer.end_reason is None else offer.end_reason.value,
        "settled_at": offer.settled_at,
    }


def offer_from(doc: Document) -> FlashOffer:
    reason = doc.get("end_reason")
    return FlashOffer(
        id=doc["_id"],
        room_id=doc["room_id"],
        product_id=doc["product_id"],
        host_id=doc["host_id"],
        price=money_from(doc["price"]),
        quantity=doc["quantity"],
        per_user_limit=doc["per_user_limit"],
        starts_at=doc["starts_at"],
        ends_at=doc["ends_at"],
        created_at=doc["created_at"],
        ended_at=doc.get("ended_at"),
        end_reason=None if reason is None else EndReason(reason),
        settled_at=doc.get("settled_at"),
        taken_at_end=doc.get(TAKEN_AT_END),
        # Offers stored before launches were noted as counted have no note: counted.
        counted=not doc.get(LAUNCH_TO_COUNT, False),
    )


def order_doc(order: Order) -> Document:
    address = order.shipping_address
    return {
        "_id": order.id,
        "idempotency_key": order.idempotency_key,
        "offer_id": order.offer_id,
        "room_id": order.room_id,
        "host_id": order.host_id,
        "buyer_id": order.buyer_id,
        "product": order.product,
        "unit_price": money_doc(order.unit_price),
        "quantity": order.quantity,
        "total": money_doc(order.total),
        "shipping_address": {
            "name": address.name,
            "line1": address.line1,
            "line2": address.line2,
            "city": address.city,
            "postal_code": address.postal_code,
            "country": address.country,
            "phone": address.phone,
        },
        "status": order.status.value,
        "created_at": order.created_at,
        "reservation_expires_at": order.reservation_expires_at,
        "reservation_id": order.reservation_id,
        "stock_build": order.stock_build,
        "history": [transition_doc(step) for step in order.history],
    }


def order_from(doc: Document) -> Order:
    return Order(
        id=doc["_id"],
        idempotency_key=doc["idempotency_key"],
        offer_id=doc["offer_id"],
        room_id=doc["room_id"],
        host_id=doc["host_id"],
        buyer_id=doc["buyer_id"],
        product=doc["product"],
        unit_price=money_from(doc["unit_price"]),
        quantity=doc["quantity"],
        total=money_from(doc["total"]),
        shipping_address=Address(**doc["shipping_address"]),
        status=OrderStatus(doc["status"]),
        created_at=doc["created_at"],
        reservation_expires_at=doc["reservation_expires_at"],
        reservation_id=doc.get("reservation_id"),
        stock_build=doc.get("stock_build"),
        history=[transition_from(step) for step in doc["history"]],
    )


def transition_doc(step: Transition) -> Document:
    return {
        "from": None if step.from_status is None else step.from_status.value,
        "to": step.to_status.value,
        "at": step.at,
        "by": step.by,
        "reason": step.reason,
    }


def transition_from(doc: Document) -> Transition:
    before = doc["from"]
    return Transition(
        from_status=None if before is None else OrderStatus(before),
        to_status=OrderStatus(doc["to"]),
        at=doc["at"],
        by=doc["by"],
        reason=doc.get("reason", ""),
    )
