"""Configuration from the environment (LIVESHOP_*). Prod refuses unsafe defaults."""

from __future__ import annotations

import re
from ipaddress import ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri
from redis.connection import parse_url

from channels.broker import KEPT_SECONDS, STALE_SECONDS

# The signing key of every dev run (the demo, tests) unless LIVESHOP_SECRET names one: public,
# so refused when LIVESHOP_ENV=prod.
DEV_SECRET = "liveshop-dev-secret-not-for-production"  # noqa: S105
# Websocket messages above this are refused by the protocol layer itself (close 1009); frames
# between `max_frame_bytes` and this get a readable `error` frame instead.
WS_MAX_MESSAGE_BYTES = 64 * 1024


# Fewer different characters than this in a key: one character or two repeated, not a random
# value (32 random hex digits had 7 at the fewest, in a million tries; 12 to 16 nearly always).
_SECRET_DISTINCT_CHARACTERS = 6


class UnsafeConfiguration(Exception):
    """Raised at start-up when prod runs on a default that is unsafe."""


_MALFORMED_URL = (
    "is not a URL its client can use: check the host, port and options, and percent-encode"
    " any : / ? # @ % in the user name and password"
)
# What the clients take; anything else would fail only once the server starts, after a wait.
_URL_SCHEMES = {
    "redis_url": ("redis://", "rediss://", "unix://"),
    "mongodb_url": ("mongodb://", "mongodb+srv://"),
}


# Values checked here rather than failing once the server runs. A public URL loses its last
# "/": paths are put after it.
_SHAPES = {
    # Empty, uvicorn would listen on every address: with the public dev key, by default.
    "host": (re.compile(r"\S+"), "must name an address or a host, without spaces"),
    # MongoDB's own rule, on every platform: none of /\. "$*<>:|? and under 64 bytes (the
    # length is checked apart: a character may take several).
    "mongodb_database": (
        re.compile(r'[^/\\. "$*<>:|?\x00]+'),
        'must be under 64 bytes, without any of / \\ . space " $ * < > : | ?',
    ),
    "public_url": (
        re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?", re.IGNORECASE),
        "must be an http:// or https:// URL without spaces, a query or a fragment",
    ),
}


class Settings(BaseSettings):
    # A refusal never quotes what it refused: a URL may carry a password.
    model_config = SettingsConfigDict(
        env_prefix="LIVESHOP_", extra="ignore", hide_input_in_errors=True
    )

    env: Literal["dev", "prod"] = "dev"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    redis_url: str | None = None
    mongodb_url: str | None = None
    mongodb_database: str = "liveshop"
    data_dir: Path = Path(".liveshop")
    secret: SecretStr | None = None
    public_url: str | None = None
    # The proxies whose X-Forwarded-Proto and -For are believed (uvicorn's forwarded_allow_ips):
    # behind one on another address, `Location` headers would say http:// for https://. Unset,
    # uvicorn reads its own FORWARDED_ALLOW_IPS, else trusts 127.0.0.1 and ::1.
    forwarded_allow_ips: str | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Longest a MongoDB operation may take, all in (an order write: primary, insert, majority).
    mongodb_timeout_seconds: float = Field(default=5.0, ge=0.001, le=600, allow_inf_nan=False)

    # Websocket limits
    # A chat line of 500 characters, each written as JSON's \uXXXX\uXXXX (an emoji), fits.
    max_frame_bytes: int = Field(default=8192, ge=256, le=WS_MAX_MESSAGE_BYTES)
    send_queue_frames: int = Field(default=256, ge=8)
    max_bad_frames: int = Field(default=10, ge=1)
    # No ceiling: a large limit is how a load test turns it off.
    chat_burst: int = Field(default=5, ge=1)
    chat_per_second: float = Field(default=1.0, ge=0.001, allow_inf_nan=False)
    # Room stream history kept for reconnecting clients (bounded: Redis refuses a huge MAXLEN,
    # and every publish would fail)
    history_events: int = Field(default=1000, ge=10, le=1_000_000)
    history_seconds: int = Field(default=600, ge=10, le=KEPT_SECONDS)  # the stream's own
    # Likes and viewer counts go out at most once per this many seconds per room; each process
    # reports its viewers as often, and a report older than broker.STALE_SECONDS no longer counts.
    counter_interval: float = Field(default=1.0, ge=0.05, le=STALE_SECONDS / 2, allow_inf_nan=False)
    # Clients that connect with ?batch=1 get room events gathered over this window in one frame.
    batch_window_ms: int = Field(default=100, ge=5, le=2000)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600, allow_inf_nan=False)
    # Per-message deflate costs ~100 KB of zlib state per socket; off unless asked for.
    ws_deflate: bool = False

    @field_validator("host", "mongodb_database", "public_url")
    @classmethod
    def _of_its_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        shape, rule = _SHAPES[info.field_name or ""]
        if value is not None and not shape.fullmatch(value):
            raise ValueError(rule)
        if info.field_name == "mongodb_database" and len(str(value).encode()) >= 64:
            raise ValueError(rule)
        if value and info.field_name == "public_url":
            scheme, rest = value.split("://", 1)
            return f"{scheme.lower()}://{rest.rstrip('/')}"  # the demo makes ws:// of http://
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        """As uvicorn reads it: `*` alone for any (it would ignore one among addresses),
        networks without host bits (it would match nothing for `127.0.0.1/8`), and each IPv4
        one also as IPv6 maps it: a server listening on `::` sees `::ffff:10.0.0.5`."""
        if value is None:
            return None
        items = [item.strip() for item in value.split(",")]
        if items == ["*"]:
            return "*"
        trusted = []
        for item in items:
            try:
                network = ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    "must list IP addresses or networks, separated by commas, or be * alone"
                ) from None
            trusted.append(str(network))
            if network.version == 4:
                trusted.append(f"::ffff:{network.network_address}/{96 + network.prefixlen}")
        return ",".join(trusted)

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("redis_url", "mongodb_url")
    @classmethod
    def _usable_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        """A URL its client takes, read here rather than failing once the server starts. Its
        faults are told without quoting any part of it: a password may be in it (redis-py's
        quote what it took for a port, which a password holding a "/" is read as)."""
        schemes = _URL_SCHEMES[info.field_name or ""]
        if not url:
            return url
        if not url.lower().startswith(schemes):
            raise ValueError(f"must begin with {' or '.join(schemes)}")
        try:
            if info.field_name == "redis_url":
                parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            elif not url.lower().startswith("mongodb+srv://"):  # that one asks DNS: at start-up
                parse_uri(url)
        except (ValueError, PyMongoError):  # InvalidURI, ConfigurationError
            raise ValueError(_MALFORMED_URL) from None
        # redis-py reads a path it cannot take for a number as database 0, without a word.
        tcp = url.lower().startswith(("redis://", "rediss://"))
        if tcp and not re.fullmatch(r"/?\d*", urlsplit(url).path):
            raise ValueError("must name its database by number, after the host (redis://host/0)")
        return url

    def signing_secret(self) -> str:
        return self.secret.get_secret_value() if self.secret else DEV_SECRET

    def check_safe(self) -> None:
        """Prod must name its secret, Redis and MongoDB explicitly."""
        if self.env != "prod":
            return
        problems = []
        # Judged without the spaces around it: a template that padded an empty or public value
        # must not pass for a key.
        secret = self.secret.get_secret_value().strip() if self.secret else ""
        if not secret or DEV_SECRET in secret:
            problems.append("LIVESHOP_SECRET must be set to a private value")
        elif len(secret) < 32:
            problems.append("LIVESHOP_SECRET must be at least 32 characters")
        elif len(set(secret)) < _SECRET_DISTINCT_CHARACTERS or _repeats_a_piece(secret):
            problems.append(
                "LIVESHOP_SECRET repeats a few characters or a word: use a random value"
                " (`openssl rand -hex 32`)"
            )
        if not self.redis_url:
            problems.append("LIVESHOP_REDIS_URL must be set")
        if not self.mongodb_url:
            problems.append("LIVESHOP_MONGODB_URL must be set")
        if problems:
            raise UnsafeConfiguration("; ".join(problems))


def _repeats_a_piece(secret: str) -> bool:
    """Whether the key is a piece written over and over (`changeme` four times, a phrase
    twice, `0123456789` and on), as a random one never is."""
    return any(secret[period:] == secret[:-period] for period in range(1, len(secret) // 2 + 1))
