"""Prometheus metrics, one registry per app so tests and several apps in a process don't mix."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.http_requests = Counter(
            "liveshop_http_requests", "HTTP requests", ["method", "status"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
