"""What a benchmark run records about itself (the code it measured, the machine, its own CPU)
and how it runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/fanout.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import (
    REPO_ROOT,
    raise_fd_limit,
)

RESULTS_DIR = REPO_ROOT / "bench" / "results"
SECRET = "bench-only-secret-never-use-in-production"  # the bench's servers only, on loopback


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _git(*argv: str) -> str:
    done = subprocess.run(
        ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def code_version(commit: str | None) -> dict[str, Any]:
    """The commit measured, and whether the server's code differs from it."""
    rev = commit or "HEAD"
    return {
        "commit": _git("rev-parse", "--short", rev),
        "subject": _git("log", "-1", "--format=%s", rev),
        "server_code_modified": commit is None
        and bool(_git("status", "--porcelain", "server", "channels", "schemas")),
    }


def export_commit(commit: str, into: Path) -> Path:
    """server/, channels/, schemas/ and static/ as of `commit`, for a run that others' edits
    to the working tree cannot disturb."""
    into.mkdir(parents=True)
    present = set(_git("ls-tree", "--name-only", commit).split())
    wanted = [path for path in ("server", "channels", "schemas", "static") if path in present]
    archive = subprocess.run(
        ["git", "archive", commit, *wanted],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def ms(value: float | None) -> str:
    """A latency cell of a report: one decimal, or '-' where there was nothing to measure."""
    return "-" if value is None else f"{value:.1f}"


def print_run_header(report: dict[str, Any], variant: str) -> None:
    """Which machine a report was measured on, and which server code (`variant` says how it ran)."""
    m, code = report["machine"], report.get("code", {})
    dirty = " + uncommitted server changes" if code.get("server_code_modified") else ""
    print(f"\nMachine: {m['cpus']} cores, {m['cpu_model']}, Python {m['python']}")
    print(f"Liveshop: {variant}, commit {code.get('commit')}{dirty}: {code.get('subject')}")


def run_main(
    main_async: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run a benchmark's async main on uvloop (what `liveshop serve` runs on) when installed."""
    raise_fd_limit()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return int(runner(main_async(args)))
