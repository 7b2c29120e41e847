"""The `liveshop` command line and access tokens, against running servers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
import websockets

from server.settings import DEV_SECRET
from tests.e2e.api import SECRET, create_live_room, http, make_token, unique
from tests.e2e.conftest import Cluster, server_env
from tests.e2e.processes import LiveshopProcess, clean_env, free_port, run_cli, running
from tests.e2e.test_flash_sale import ADDRESS
from tests.e2e.wsclient import WsClient, connect_closed_code
from tests.servers import RedisServer


def test_token_command_prints_a_jwt_signed_with_the_secret(workdir: Path) -> None:
    before = time.time()
    result = run_cli(
        ["token", "--user", "cli-user", "--role", "host", "--name", "Cli Host", "--ttl", "120"],
        clean_env(LIVESHOP_SECRET=SECRET),
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2, result.stdout
    assert "\n" not in token, result.stdout

    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "cli-user"
    assert claims["role"] == "host"
    assert claims["name"] == "Cli Host"
    assert before + 120 - 5 <= claims["exp"] <= time.time() + 120 + 5
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-at-least-32-chars!!", algorithms=["HS256"])


@pytest.mark.parametrize(
    "args",
    [
        ["token", "--user", "u", "--role", "emperor"],
        ["token", "--role", "host"],
        ["token", "--user", "u", "--role", "host", "--ttl", "0"],
        ["token", "--user", "u", "--role", "host", "--ttl", "999999999999"],
        ["token", "--user", "a\tb", "--role", "shopper"],
        ["token", "--user", "\u202eu", "--role", "shopper"],
        ["token", "--user", "u" * 129, "--role", "shopper"],
        ["token", "--user", "u", "--role", "shopper", "--name", "Mia\u200b"],
        ["token", "--user", "u", "--role", "shopper", "--country", "ZZ"],
    ],
)
def test_token_command_refuses_bad_arguments(args: list[str], workdir: Path) -> None:
    result = run_cli(args, clean_env(LIVESHOP_SECRET=SECRET), cwd=workdir)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout.strip() == "", "no token may be printed"
    assert result.stderr.strip()


async def test_cli_token_works_on_http_and_websocket(cluster: Cluster, workdir: Path) -> None:
    user = unique("cli-host")
    result = run_cli(
        ["token", "--user", user, "--role", "host", "--name", "Cli Host"],
        clean_env(LIVESHOP_SECRET=SECRET),
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    room_id = await create_live_room(cluster.b.base_url, token)
    async with http(cluster.a.base_url, token) as client:
        room = (await client.get(f"/rooms/{room_id}")).json()
    assert room["host_id"] == user
    async with await WsClient.connect(cluster.a.ws_url(room_id, token), name="cli") as ws:
        hello = await ws.hello()
        assert hello["you"]["user_id"] == user
        assert hello["you"]["role"] == "host"
        assert hello["you"]["name"] == "Cli Host"


async def test_bad_tokens_and_unknown_rooms_are_refused_with_close_codes(cluster: Cluster) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    forged = make_token("mallory", "admin", secret="not-the-server-secret-0123456789abcdef")
    expired = make_token(unique("late"), "shopper", ttl=-30)
    garbage = "not.a.jwt"
    for process in (cluster.a, cluster.b):
        for label, token in (("forged", forged), ("expired", expired), ("garbage", garbage)):
            code, first = await connect_closed_code(process.ws_url(room_id, token))
            assert code == 4001, f"{label} token on {process.name}: closed with {code}"
            assert first is None, f"{label} token on {process.name} got {first}"
        code, first = await connect_closed_code(
            process.ws_url("r_no-such-room-here", make_token(unique("v")))
        )
        assert code == 4004, f"unknown room on {process.name}: closed with {code}"
        assert first is None, first
    # A forged token is no better on HTTP.
    async with http(cluster.a.base_url, forged) as client:
        response = await client.post("/rooms", json={"title": "forged"})
    assert response.status_code == 401, response.text
    # The right token still gets in.
    async with await WsClient.connect(
        cluster.a.ws_url(room_id, make_token("welcome")), name="ok"
    ) as ws:
        assert (await ws.hello())["you"]["user_id"] == "welcome"


# Backends that prod accepts as named (nothing listens there: a refusal must not get that far).
_PROD_URLS = {
    "LIVESHOP_REDIS_URL": "redis://127.0.0.1:1/0",
    "LIVESHOP_MONGODB_URL": "mongodb://127.0.0.1:1/?replicaSet=rs0",
}


@pytest.mark.parametrize(
    ("settings", "complaints"),
    [
        ({}, ["LIVESHOP_SECRET", "LIVESHOP_REDIS_URL", "LIVESHOP_MONGODB_URL"]),
        (
            {
                "LIVESHOP_SECRET": "too-short-secret",
                "LIVESHOP_REDIS_URL": "redis://127.0.0.1:1/0",
                "LIVESHOP_MONGODB_URL": "mongodb://127.0.0.1:1/?replicaSet=rs0",
            },
            ["LIVESHOP_SECRET", "32"],
        ),
        (
            {
                "LIVESHOP_SECRET": "0123456789abcdef" * 3,
                "LIVESHOP_REDIS_URL": _PROD_URLS["LIVESHOP_REDIS_URL"],
            },
            ["LIVESHOP_MONGODB_URL"],
        ),
        # Blank, or the public key padded: a template's empty or default value, not a key.
        ({**_PROD_URLS, "LIVESHOP_SECRET": " " * 40}, ["LIVESHOP_SECRET", "private"]),
        ({**_PROD_URLS, "LIVESHOP_SECRET": f"{DEV_SECRET} "}, ["LIVESHOP_SECRET", "private"]),
        ({**_PROD_URLS, "LIVESHOP_SECRET": "k" * 40}, ["LIVESHOP_SECRET", "random"]),
        ({**_PROD_URLS, "LIVESHOP_SECRET": "ab" * 20}, ["LIVESHOP_SECRET", "random"]),
    ],
)
def test_prod_refuses_to_serve_on_unsafe_settings(
    settings: dict[str, str], complaints: list[str], workdir: Path
) -> None:
    data_dir = workdir / "data"
    env = clean_env(LIVESHOP_ENV="prod", LIVESHOP_DATA_DIR=str(data_dir), **settings)
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    for word in complaints:
        assert word in result.stderr, f"{word!r} missing from: {result.stderr}"
    # Refused before anything starts: no server, no backend asked (nothing else is logged).
    assert result.stderr.startswith("liveshop: configuration refused:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not data_dir.exists(), "nothing may be started (no embedded MongoDB) when refusing"


def test_prod_refuses_the_demo(workdir: Path) -> None:
    """It would seed a live room into the shop's database and print tokens signed with its
    key, valid for a day, to a log."""
    data_dir = workdir / "data"
    env = clean_env(
        LIVESHOP_ENV="prod",
        LIVESHOP_DATA_DIR=str(data_dir),
        LIVESHOP_SECRET=SECRET + "-for-prod-0123456789",
        **_PROD_URLS,
    )
    result = run_cli(["demo", "--port", str(free_port())], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stderr == "liveshop: the demo does not run with LIVESHOP_ENV=prod\n"
    assert result.stdout == "", "no token may be printed"
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVESHOP_LOG_LEVEL", "verbose"),
        ("LIVESHOP_HOST", ""),  # would listen on every address
        ("LIVESHOP_HOST", "not a host"),
        ("LIVESHOP_HOST", "192.0.2.1"),  # an address, but not this machine's: uvicorn exits 3
        ("LIVESHOP_MONGODB_DATABASE", ""),
        ("LIVESHOP_MONGODB_DATABASE", "shop.prod"),
        ("LIVESHOP_MONGODB_DATABASE", "x" * 64),
        ("LIVESHOP_HISTORY_EVENTS", str(2**63)),  # Redis refuses it: every publish would fail
        ("LIVESHOP_SHUTDOWN_GRACE_SECONDS", "inf"),
        ("LIVESHOP_COUNTER_INTERVAL", "15"),  # viewers' reports would go stale between two
        ("LIVESHOP_CHAT_PER_SECOND", "inf"),
        ("LIVESHOP_MAX_FRAME_BYTES", "200000"),  # the protocol would close the socket first
        ("LIVESHOP_PUBLIC_URL", "shop.example"),
        ("LIVESHOP_PUBLIC_URL", "https://shop.example?x=1"),  # paths would go after the query
        ("LIVESHOP_FORWARDED_ALLOW_IPS", "proxy.internal"),  # uvicorn takes addresses only
        ("LIVESHOP_MONGODB_TIMEOUT_SECONDS", "nan"),
        ("LIVESHOP_COUNTER_INTERVAL", "nan"),
        ("LIVESHOP_SHUTDOWN_GRACE_SECONDS", "nan"),
    ],
)
def test_a_value_that_would_fail_later_is_refused_as_configuration(
    variable: str, value: str, workdir: Path
) -> None:
    data_dir = workdir / "data"
    env = clean_env(LIVESHOP_DATA_DIR=str(data_dir), **{variable: value})
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stderr.startswith(f"liveshop: configuration refused: {variable}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not data_dir.exists(), "nothing may be started when refusing"


def test_a_data_dir_mongodb_cannot_use_is_refused_as_configuration(workdir: Path) -> None:
    data_dir = workdir / "a-file"
    data_dir.write_text("not a directory")
    env = clean_env(LIVESHOP_DATA_DIR=str(data_dir))
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    (refusal,) = [
        json.loads(line) for line in result.stderr.splitlines() if "startup_refused" in line
    ]
    assert (refusal["backend"], refusal["error"]) == ("mongodb", "UnusableDataDir")


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_flag_out_of_range_is_refused_as_configuration(port: str, workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(LIVESHOP_DATA_DIR=str(data_dir))
    result = run_cli(["serve", "--port", port], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "configuration refused" in result.stderr
    assert "port" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not data_dir.exists(), "nothing may be started when refusing"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("LIVESHOP_REDIS_URL", "http://:hunter2@127.0.0.1/"),
        ("LIVESHOP_REDIS_URL", "redis://:hunter2@127.0.0.1:port/0"),
        ("LIVESHOP_REDIS_URL", "redis://:hunter2/with/slashes@127.0.0.1:6379/0"),
        ("LIVESHOP_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/zero"),  # redis-py would take 0
        ("LIVESHOP_MONGODB_URL", "mongo://x"),
        ("LIVESHOP_MONGODB_URL", "mongodb://u:hunter2@db.example:27O17/"),
        ("LIVESHOP_MONGODB_URL", "mongodb://u:hunt:er2@127.0.0.1/"),
    ],
)
def test_a_url_no_client_takes_is_refused_as_configuration(
    variable: str, url: str, workdir: Path
) -> None:
    data_dir = workdir / "data"
    env = clean_env(LIVESHOP_DATA_DIR=str(data_dir), **{variable: url})
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "configuration refused" in result.stderr
    assert variable in result.stderr
    assert "hunter" not in result.stderr, "URLs may hold passwords"
    assert url not in result.stderr
    assert not data_dir.exists(), "nothing may be started when refusing"


def test_a_mongodb_srv_url_its_client_cannot_use_is_refused_as_configuration(
    workdir: Path,
) -> None:
    """Read only as the server starts (its hosts are asked of DNS): exit 2 all the same, not
    3, "away", which a supervisor would restart for ever."""
    url = "mongodb+srv://u:hunter2@example.invalid:27017/"  # a port: no SRV name takes one
    env = clean_env(LIVESHOP_DATA_DIR=str(workdir / "data"), LIVESHOP_MONGODB_URL=url)
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert "hunter2" not in result.stderr
    (refusal,) = _startup_refusals(result.stderr)
    assert (refusal["backend"], refusal["error"]) == ("mongodb", "InvalidURI")


def test_a_redis_that_cannot_be_reached_ends_the_start_up_in_one_line(
    mongodb_url: str, workdir: Path
) -> None:
    """A backend away at start-up is the operator's to fix: which one and why, in one log line,
    not a traceback of Liveshop's and redis-py's frames to read through."""
    env = server_env(f"redis://127.0.0.1:{free_port()}", mongodb_url, unique("refused"))
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=60)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    refusals = _startup_refusals(result.stderr)
    assert [(r["backend"], r["error"]) for r in refusals] == [("redis", "ConnectionError")]
    assert "Connection refused" in refusals[0]["detail"]


def test_a_redis_that_evicts_keys_ends_the_start_up_in_one_line(
    redis_server: RedisServer, mongodb_url: str, workdir: Path
) -> None:
    asyncio.run(_set_eviction(redis_server.url, "allkeys-lru"))
    env = server_env(redis_server.url, mongodb_url, unique("refused"))
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=60)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    (refusal,) = _startup_refusals(result.stderr)
    assert refusal["error"] == "RedisNotAllowed"
    assert "maxmemory-policy noeviction" in refusal["detail"]


def test_a_redis_database_the_redis_does_not_have_is_refused_as_configuration(
    redis_server: RedisServer, mongodb_url: str, workdir: Path
) -> None:
    """Exit 2, not 3 ("away, a restart may find it back"), which a supervisor would restart
    for ever; and not blamed on the Redis user's rights."""
    url = redis_server.url.rsplit("/", 1)[0] + "/99"  # 16 databases, by default
    env = server_env(url, mongodb_url, unique("refused"))
    result = run_cli(["serve", "--port", str(free_port())], env, cwd=workdir, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    (refusal,) = _startup_refusals(result.stderr)
    assert refusal["error"] == "RedisNoSuchDatabase"
    assert "LIVESHOP_REDIS_URL names a database" in refusal["detail"]


def _startup_refusals(stderr: str) -> list[dict[str, Any]]:
    """The `startup_refused` lines of a server's log."""
    lines = map(json.loads, stderr.splitlines())
    return [line for line in lines if line["event"] == "startup_refused"]


async def _set_eviction(url: str, policy: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.config_set("maxmemory", "1gb")
        await client.config_set("maxmemory-policy", policy)
    finally:
        await client.aclose()


@pytest.mark.parametrize("name", ["token", "%74oken", "t%6Fk%65n"])
async def test_server_logs_never_contain_access_tokens(cluster: Cluster, name: str) -> None:
    """Structured logs carry no secrets: a token in the websocket URL must not be logged,
    however the client spells the parameter's name (the server decodes `%74oken` as `token`)."""
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    token = make_token(unique("logged"), name="Logged")
    url = cluster.a.ws_url(room_id, token).replace("?token=", f"?{name}=", 1)
    async with await WsClient.connect(url, name="logged") as ws:
        await ws.hello()
        await ws.chat("hello", "log-check")
        await ws.recv_until("chat.message")
    await asyncio.sleep(0.2)  # let the process write its log lines
    logs = cluster.a.stderr_text() + cluster.a.stdout_text()
    assert room_id in logs, "the server logged nothing about this room: the check proves nothing"
    leaked = [line[:200] for line in logs.splitlines() if token in line]
    assert not leaked, f"{len(leaked)} log lines contain the access token, e.g. {leaked[0]}"
    signature = token.rsplit(".", 1)[1]
    assert signature not in logs, "the token's signature appears in the logs"


async def test_debug_logs_carry_no_frame_or_handshake_header(cluster: Cluster) -> None:
    """At LIVESHOP_LOG_LEVEL=debug uvicorn hands websockets a logger of its own, under which
    every frame (chat text, a claim's address) and every handshake header (a token a native
    client sends in `Authorization`) would be logged."""
    with running([LiveshopProcess(cluster.env(LIVESHOP_LOG_LEVEL="debug"), name="D")]) as (server,):
        room_id = await create_live_room(server.base_url, make_token(unique("host"), "host"))
        shopper = make_token(unique("shopper"))
        async with await WsClient.connect(server.ws_url(room_id, shopper), name="b") as ws:
            await ws.hello()
            await ws.chat("a line nobody logs", "c1")
            await ws.recv_until("chat.message")
            address = {**ADDRESS, "name": "Adalovelace Byron"}  # last: a cut frame keeps its end
            claim = {"offer_id": "f_none", "idempotency_key": "k1", "shipping_address": address}
            await ws.send({"type": "offer.claim", **claim})
            await ws.recv_until("error")
        token = make_token(unique("native"))
        headers = {"Authorization": f"Bearer {token}"}
        anonymous = server.ws_url(room_id, None)
        async with websockets.connect(anonymous, additional_headers=headers) as raw:
            await raw.recv()
        await asyncio.sleep(0.2)  # let the process write its log lines
        logs = server.stderr_text() + server.stdout_text()
    assert '"level": "debug"' in logs, "no debug line at all: the check proves nothing"
    secrets = ("a line nobody logs", "Adalovelace", token.rsplit(".", 1)[1])
    leaked = [line[:200] for line in logs.splitlines() if any(s in line for s in secrets)]
    assert not leaked, "\n".join(leaked)


async def _raw_request(port: int, request: bytes, chunk: int = 64 * 1024) -> bytes:
    """Send `request` in chunks of `chunk` bytes and read the answer until the server closes
    the connection (or sends one whole answer to a request that keeps it open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            for start in range(0, len(request), chunk):
                writer.write(request[start : start + chunk])
                await writer.drain()
        except ConnectionError:  # refused midway: the answer is already on its way
            pass
        return await asyncio.wait_for(reader.read(1 << 20), 10)
    finally:
        writer.close()


async def test_a_request_head_too_large_is_refused_before_it_is_buffered(
    cluster: Cluster,
) -> None:
    port = cluster.a.port
    assert port is not None
    huge = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * (4 << 20) + b"\r\n\r\n"
    answer = await _raw_request(port, huge)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"content-type: application/problem+json" in head
    assert json.loads(body)["code"] == "headers_too_large"
    # A head of ordinary size (a long token, cookies) still goes through.
    usual = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 8000 + b"\r\n\r\n"
    assert (await _raw_request(port, usual)).startswith(b"HTTP/1.1 200 ")


async def test_a_request_that_is_not_http_is_answered_as_problem_json_without_a_warning(
    cluster: Cluster,
) -> None:
    malformed = [
        b"GET /heal thz HTTP/1.1\r\nhost: x\r\n\r\n",  # a space in the path
        b"POST /api/v1/rooms HTTP/1.1\r\nhost: x\r\ncontent-length: 1x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nbad name: y\r\n\r\n",
    ]
    port = cluster.a.port
    assert port is not None
    for request in malformed:
        answer = await _raw_request(port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"content-type: application/problem+json" in head
        assert json.loads(body)["code"] == "malformed_request"
    lines = cluster.a.stderr_text().splitlines()
    told = [line for line in lines if "Invalid HTTP request" in line]
    assert all('"level": "info"' in line for line in told), told[:2]  # the client's fault


async def test_hostile_websocket_input_is_answered_without_an_error_in_the_log(
    cluster: Cluster,
) -> None:
    host = make_token(unique("host"), "host")
    room_id = await create_live_room(cluster.a.base_url, host)
    url = cluster.a.ws_url(room_id)
    # A `since` of digits that are not ASCII: nothing to recover, as any unusable one.
    for since in ("²", "①", "¹²"):
        async with websockets.connect(f"{url}?since={since}&epoch=abc") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (hello["type"], hello["recovered"]) == ("hello", False)
    # A text frame that is not UTF-8: closed 1007 by the protocol.
    async with websockets.connect(url) as ws:
        await ws.recv()
        await ws.send(b'{"type": "ping", "ref": "\xff"}', text=True)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1007
    await cluster.a.logged("ws_left", within=5)
    errors = [line for line in cluster.a.stderr_text().splitlines() if '"level": "error"' in line]
    assert not errors, errors[:2]
