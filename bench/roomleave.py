"""A crowd leaving a room at once: the event loop's time for N viewers of one process to leave.

When a show ends, a server drains or a mobile network drops, every viewer of a room leaves
within moments, and while the hub forgets them the process's event loop does nothing else: no
claim is answered, no frame is sent. This joins N viewers (signed-in shoppers, each on one
socket) to one room of a hub on the in-process broker, then times all of them leaving at once
(`Hub.leave`, as each socket's endpoint calls it). Each code version runs in a fresh process;
with `--against C`, commit C runs too, in turn with this tree, so the two are measured alike.

    .venv/bin/python -m bench.roomleave                     # this tree
    .venv/bin/python -m bench.roomleave --against 275e3f6   # and that commit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/roomleave.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runinfo import RESULTS_DIR, code_version, export_commit, machine

REPO_ROOT = Path(__file__).resolve().parent.parent


class Socket:
    """A websocket as the hub sees it, that takes every frame."""

    async def send_text(self, data: str) -> None:
        pass

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def measure(viewers: int, source: str) -> float:
    """Seconds for `viewers` viewers of one room to leave it at once, in the code at `source`."""
    sys.path.insert(0, source)  # ahead of this tree and of the editable install
    from channels.broker_memory import MemoryBroker, MemoryBus
    from channels.hub import Hub, HubLimits
    from channels.room_state import RoomView
    from server.domain.identity import Identity, Role
    from server.domain.rooms import Room, RoomStatus
    from server.metrics import Metrics

    measured = str(sys.modules["channels"].__file__)
    if not measured.startswith(source):
        raise RuntimeError(f"measuring {measured}, not the code at {source}")
    room = Room("r1", "host-1", "Show", RoomStatus.LIVE, datetime(2026, 11, 29, tzinfo=UTC))

    async def load_room(room_id: str) -> RoomView:
        return RoomView(room)

    hub = Hub(MemoryBroker(MemoryBus()), load_room, Metrics(), HubLimits())
    await hub.start()
    try:
        joined = [
            (await hub.join("r1", Identity(f"shopper-{n}", Role.SHOPPER), Socket()))[0]
            for n in range(viewers)
        ]
        started = time.perf_counter()
        await asyncio.gather(*(hub.leave(conn) for conn in joined))
        return time.perf_counter() - started
    finally:
        await hub.close()


def run_variant(source: Path, viewers: int) -> float:
    argv = [sys.executable, "-m", "bench.roomleave", "--child", str(viewers), str(source)]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        viewers, source = args.child
        print(asyncio.run(measure(int(viewers), source)))
        return 0
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_version(None),
        "against": args.against,
        "seconds": {},
    }
    with tempfile.TemporaryDirectory(prefix="liveshop-roomleave-") as tmp:
        variants = {"this tree": REPO_ROOT}
        if args.against:
            variants[args.against] = export_commit(args.against, Path(tmp) / "against")
        names = "".join(f"{name:>16}" for name in variants)
        print(f"{'viewers':>8}{names}   (ms, best of 3)")
        for viewers in args.viewers:
            row = {
                name: min(run_variant(source, viewers) for _ in range(3))
                for name, source in variants.items()
            }
            report["seconds"][viewers] = row
            print(f"{viewers:>8}" + "".join(f"{1000 * s:>16.1f}" for s in row.values()))
    out = RESULTS_DIR / f"roomleave-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {out}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--viewers", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--against", help="also measure this commit (git archive)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # viewers, source
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
