"""CPU and latency figures for a benchmark phase: percentiles, per-process CPU, and waiting
for a quiet machine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.runinfo import own_cpu


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(p * len(ordered) + 0.5) - 1))], 2)

    return {
        "n": len(ordered),
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1], 2),
    }


class CpuMeter:
    """CPU of each process (and of this generator), sampled every 100 ms, so a window can be cut
    to when the work happened rather than to when the bench stopped waiting."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self._samples: list[tuple[int, dict[str, float]]] = []
        self._task: asyncio.Task[None] | None = None

    def _now(self) -> tuple[int, dict[str, float]]:
        return time.monotonic_ns(), cpu_seconds(self.processes)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._samples.append(self._now())

    def start(self) -> None:
        self._samples = [self._now()]
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._samples.append(self._now())

    def pct(self, t0_ns: int | None = None, t1_ns: int | None = None) -> dict[str, float]:
        """% of one core per process between the samples around [t0, t1]."""
        samples = self._samples
        a = samples[0]
        if t0_ns is not None:
            a = max((s for s in samples if s[0] <= t0_ns), key=lambda s: s[0], default=a)
        b = samples[-1]
        if t1_ns is not None:
            b = min((s for s in samples if s[0] >= t1_ns), key=lambda s: s[0], default=b)
        return cpu_pct(a, b)


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds so far of this generator, each named process and the whole machine."""
    found = {"generator": own_cpu()}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[name] = times.user + times.system
    total = psutil.cpu_times()
    found["machine"] = total.user + total.nice + total.system  # guest time is inside user
    found["kernel_irq"] = getattr(total, "irq", 0.0) + getattr(total, "softirq", 0.0)
    found["steal"] = getattr(total, "steal", 0.0)
    return found


def cpu_pct(a: tuple[int, dict[str, float]], b: tuple[int, dict[str, float]]) -> dict[str, float]:
    """% of one core per process between two readings. "others": every other process on the
    machine meanwhile (other people's benchmarks and tests); "kernel_irq": interrupt and softirq
    time, mostly loopback TCP here; "steal": the hypervisor's."""
    window = max((b[0] - a[0]) / 1e9, 1e-9)
    pct = {k: round(100 * (v - a[1].get(k, v)) / window, 1) for k, v in b[1].items()}
    ours = sum(v for k, v in pct.items() if k not in ("machine", "kernel_irq", "steal"))
    pct["others"] = round(max(0.0, pct.get("machine", 0.0) - ours), 1)
    return pct


async def wait_quiet(processes: dict[str, psutil.Process], max_s: float, limit: float) -> float:
    """Wait (up to `max_s`) until whatever is not this bench uses under `limit` % of one core
    for three seconds running: on a shared 2-core machine, other runs skew every figure.
    Returns the foreign load last seen."""
    deadline, calm, others = time.monotonic() + max_s, 0, 0.0
    while True:
        a = (time.monotonic_ns(), cpu_seconds(processes))
        await asyncio.sleep(1.0)
        others = cpu_pct(a, (time.monotonic_ns(), cpu_seconds(processes)))["others"]
        calm = calm + 1 if others < limit else 0
        if calm >= 3 or time.monotonic() > deadline:
            return others


@contextlib.contextmanager
def no_generator_gc() -> Iterator[None]:
    """No garbage collection in this generator while a phase is timed: a full collection over
    thousands of claims and sockets stalls it for tens of ms, which the paced runs would count
    as latency (they time from the due moment)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
