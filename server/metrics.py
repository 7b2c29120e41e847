"""Prometheus metrics, one registry per app so tests and several apps in a process don't mix."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# A claim's answer: from a refusal in well under a millisecond to an order that waited on a
# backend's deadline (5 s).
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "liveshop_ws_connections", "Open websocket connections", registry=r
        )
        self.rooms = Gauge(
            "liveshop_rooms_active", "Rooms with viewers on this process", registry=r
        )
        self.frames_in = Counter(
            "liveshop_ws_frames_in", "Client frames received", ["outcome"], registry=r
        )
        self.frames_out = Counter("liveshop_ws_frames_out", "Frames queued to clients", registry=r)
        self.slow_disconnects = Counter(
            "liveshop_ws_slow_consumer_disconnects",
            "Connections closed because their send queue overflowed",
            registry=r,
        )
        self.publish_seconds = Histogram(
            "liveshop_broker_publish_seconds",
            "Time to publish one room event to the broker",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.stream_gaps = Counter(
            "liveshop_stream_gaps", "Room events missed on pub/sub and refilled", registry=r
        )
        self.stream_resets = Counter(
            "liveshop_stream_resets", "Room histories found lost (epoch changed)", registry=r
        )

        claims = Counter(
            "liveshop_claims",
            "Claims answered, by transport and outcome: order, replayed (a retry's same order),"
            " or the error's code (sold_out, limit_reached, offer_not_active, unavailable, ...)",
            ["transport", "outcome"],
            registry=r,
        )
        claim_seconds = Histogram(
            "liveshop_claim_seconds",
            "Time to answer a claim, by transport",
            ["transport"],
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.http_claims = ClaimOutcomes(claims, claim_seconds, "http")
        self.ws_claims = ClaimOutcomes(claims, claim_seconds, "websocket")
        self.housekeeping_done = Counter(
            "liveshop_housekeeping_done",
            "What housekeeping's steps acted on: orders expired, offers ended or settled,"
            " orphan reservations released, buyers told, ...",
            ["step"],
            registry=r,
        )
        self.housekeeping_failures = Counter(
            "liveshop_housekeeping_failures",
            "Housekeeping steps that failed (a backend away), retried the next round",
            ["step"],
            registry=r,
        )
        # Read when scraped (app.py sets it where the stock is in Redis): 0 otherwise.
        self.stock_redis_refused = Gauge(
            "liveshop_stock_redis_refused",
            "1 while the stock's Redis fails Liveshop's checks (an evicting policy, a right"
            " missing) and claims are refused; the reason is on /readyz and in the log",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ClaimOutcomes:
    """One transport's claims: counted by outcome and timed, each labelled child looked up
    once (a `labels()` call costs more than the count itself)."""

    def __init__(self, claims: Counter, seconds: Histogram, transport: str) -> None:
        self._claims = claims
        self._transport = transport
        self._by_outcome: dict[str, Counter] = {}
        self._seconds = seconds.labels(transport=transport)

    def record(self, outcome: str, started: float) -> None:
        """Count a claim answered with `outcome`, begun at `started` (`time.perf_counter()`)."""
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._claims.labels(transport=self._transport, outcome=outcome)
            self._by_outcome[outcome] = counter
        counter.inc()
        self._seconds.observe(time.perf_counter() - started)
