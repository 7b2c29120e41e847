"""The host's figures, counted from the orders by one aggregation when asked (see
domain/figures.py: they are kept nowhere else)."""

from __future__ import annotations

from pymongo.asynchronous.collection import AsyncCollection

from server.adapters.mongo.stores import Document
from server.domain.figures import OfferFigures, OrderGroup, figures_of
from server.domain.orders import OrderStatus


async def figures_by_offer(
    orders: AsyncCollection[Document], match: Document
) -> dict[str, OfferFigures]:
    """The figures of each offer among the orders `match` selects, by offer id (an offer
    without any of them is absent)."""
    cursor = await orders.aggregate(
        [
            {"$match": match},
            {
                "$group": {
                    "_id": {
                        "offer_id": "$offer_id",
                        "status": "$status",
                        "currency": "$total.currency",
                    },
                    "orders": {"$sum": 1},
                    "units": {"$sum": "$quantity"},
                    "amount": {"$sum": "$total.amount"},  # Decimal128: exact
                }
            },
        ]
    )
    groups: dict[str, list[OrderGroup]] = {}
    async for doc in cursor:
        group = doc["_id"]
        groups.setdefault(group["offer_id"], []).append(
            OrderGroup(
                OrderStatus(group["status"]),
                group["currency"],
                doc["orders"],
                doc["units"],
                doc["amount"].to_decimal(),
            )
        )
    return {offer_id: figures_of(offer_id, found) for offer_id, found in groups.items()}
