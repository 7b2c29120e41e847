"""py-spy on the server during a phase, and where its samples fell by library."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import profile

SPY_MAX_SECONDS = 300  # py-spy runs until the phase's last answer, then gets SIGINT
# Where a profiled server spent its samples, by the library of the innermost frame that belongs
# to one: a rough bill per claim (the rest is the event loop, which uvloop runs in C, and app
# code).
LIBRARIES = (
    ("pymongo", ("pymongo/", "bson/")),
    ("redis-py", ("redis/",)),
    ("websocket frames", ("websockets/", "channels/connection.py")),
    ("HTTP (uvicorn, starlette)", ("starlette/", "uvicorn/protocols/http", "proxy_headers")),
    ("PyJWT", ("jwt/",)),
    ("pydantic", ("pydantic",)),
    ("json", ("json/",)),
)


async def stop_spy(spy: asyncio.subprocess.Process, out: Path) -> dict[str, Any]:
    """Stop py-spy once the last answer is in (it writes its samples on SIGINT) and sum up."""
    with contextlib.suppress(ProcessLookupError):
        spy.send_signal(signal.SIGINT)
    await spy.wait()
    return {**profile.summarize(out), "libraries": library_shares(out)}


def library_shares(path: Path) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            where = "event loop, asyncio, app code"
            for frame in reversed(stack.split(";")):
                hit = next((n for n, keys in LIBRARIES if any(k in frame for k in keys)), None)
                if hit is not None:
                    where = hit
                    break
            counts[where] += int(count)
    total = sum(counts.values()) or 1
    return [(name, round(100 * n / total, 1)) for name, n in counts.most_common()]
