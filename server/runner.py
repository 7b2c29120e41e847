"""Run the app under uvicorn with a shutdown that drains websockets first."""

from __future__ import annotations

import errno
import gc
import logging
import socket

import uvicorn
from starlette.types import ASGIApp

from server.container import Container
from server.http_head import HeadLimitedHttpToolsProtocol
from server.settings import WS_MAX_MESSAGE_BYTES, Settings
from server.ws_protocol import GuardedWebSocketProtocol

log = logging.getLogger("liveshop.server")

UNACKNOWLEDGED_DATA_TIMEOUT_MS = 30_000


# Thousands of viewers keep hundreds of thousands of objects alive, and under load every gen-0
# collection promotes frames and tasks that are merely in flight; with CPython's defaults that
# means a full collection (150-350 ms, the whole room stalls) several times a second. Rarer
# young collections promote far fewer of them; the objects that live for the whole process
# (modules, the app) are frozen out of collections altogether once the server is up.
GC_THRESHOLDS = (50_000, 20, 100)


class DrainingServer(uvicorn.Server):
    """On SIGTERM: stop accepting, close every websocket with 1001, then shut down as usual."""

    def __init__(self, config: uvicorn.Config, app: ASGIApp) -> None:
        super().__init__(config)
        self._app = app  # the app as given, not as uvicorn wrapped it in middleware

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        gc.collect()
        gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        # Set by the app's lifespan once it has started (create_app).
        container: Container | None = getattr(getattr(self._app, "state", None), "container", None)
        if container is not None:
            grace = container.settings.shutdown_grace_seconds
            log.info("draining", extra={"connections": container.hub.connection_count()})
            await container.hub.drain(grace)
        await super().shutdown(sockets)
        # A drained stop on SIGTERM or Ctrl-C is a success: exit 0 instead of letting uvicorn
        # re-raise the signal (which makes the exit status 143 or 130).
        self._captured_signals.clear()


class UnusableListenAddress(Exception):
    """LIVESHOP_HOST names nothing this machine can listen on: a setting to fix (exit 2), where
    uvicorn would exit 3, as for a port taken, which a restart may find free."""


def check_listen_address(host: str) -> None:
    """Raise UnusableListenAddress for a host that does not resolve, or that this machine
    cannot listen on, bound as uvicorn binds it (IPv6 for an address with a colon, else IPv4)
    on a free port, released at once. A DNS that does not answer is not the setting's fault:
    left to the start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_AGAIN:
                raise UnusableListenAddress(f"{host!r} does not resolve") from None
        except OSError as exc:
            # EINVAL: an IPv6 link-local address without the interface it is on (`%eth0`).
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
                raise UnusableListenAddress(f"{host!r} is no address to listen on here") from None


def run(app: ASGIApp, settings: Settings) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        http=HeadLimitedHttpToolsProtocol,
        # The protocol whose sockets take room frames directly (channels/direct_send.py).
        ws=GuardedWebSocketProtocol,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        ws_per_message_deflate=settings.ws_deflate,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )
    gc.set_threshold(*GC_THRESHOLDS)
    listener = config.bind_socket()
    if settings.port == 0:  # the port the system chose: the one the demo's URLs must name
        settings.port = listener.getsockname()[1]
    _drop_peers_that_stop_reading(listener)
    DrainingServer(config, app).run(sockets=[listener])  # uvloop when installed


def _drop_peers_that_stop_reading(listener: socket.socket) -> None:
    """Let the kernel drop a connection whose data stays unacknowledged (a peer that stopped
    reading, or vanished) for this long. Accepted sockets inherit the option from the listener."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None and listener.family in (socket.AF_INET, socket.AF_INET6):
        listener.setsockopt(socket.IPPROTO_TCP, option, UNACKNOWLEDGED_DATA_TIMEOUT_MS)
