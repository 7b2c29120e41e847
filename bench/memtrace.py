"""Python heap per idle connection: tracemalloc snapshots of the server, compared."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/fanout.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import (
    Child,
)


async def snapshot(server: Child, path: Path) -> None:
    """Ask the traced server for a tracemalloc snapshot and wait until it is written."""
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(path.exists):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no tracemalloc snapshot at {path}")
        await asyncio.sleep(0.2)


def compare_snapshots(folder: Path, added: int, top: int = 20) -> dict[str, Any]:
    """Python memory per added connection: the total, and the allocation sites that grew most."""
    before = tracemalloc.Snapshot.load(str(folder / "snap-0.bin"))
    after = tracemalloc.Snapshot.load(str(folder / "snap-1.bin"))
    diffs = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diffs)
    sites = [
        {
            "where": f"{_short_path(d.traceback[0].filename)}:{d.traceback[0].lineno}",
            "bytes_per_connection": round(d.size_diff / added),
            "blocks_per_connection": round(d.count_diff / added, 2),
        }
        for d in sorted(diffs, key=lambda d: d.size_diff, reverse=True)[:top]
    ]
    return {"total_kb_per_connection": round(total / added / 1024, 1), "top_sites": sites}


def _short_path(filename: str) -> str:
    parts = Path(filename).parts
    return "/".join(parts[-2:])
