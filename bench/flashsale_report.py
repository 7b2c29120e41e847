"""The flash-sale benchmark's verdicts against the issue's targets, and its printed table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flashsale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runinfo import ms, print_run_header

# The issue's targets.
CLAIMS_VS_NOOP = 0.5
PACED_P99_MS = 100.0
CPU_COLUMNS = ("server", "mongod", "valkey", "generator", "kernel_irq", "others")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _told_orders_hold(m: dict[str, Any]) -> bool:
    return not m["orders_told_but_missing"] and not m["orders_told_not_holding_stock"]


def evaluate(report: dict[str, Any]) -> list[dict[str, str]]:
    verdicts: list[dict[str, str]] = []

    def add(target: str, figure: str, ok: bool | None, kind: str = "correctness") -> None:
        verdicts.append({"target": target, "figure": figure, "verdict": _verdict(ok), "kind": kind})

    burst, noop, paced = report.get("burst"), report.get("noop"), report.get("paced")
    if burst and noop:
        claims, ceiling = burst["claims"]["answers_per_s"], noop["requests_per_s"]
        add(
            f"claims/s through one server >= {CLAIMS_VS_NOOP:g} x no-op GET /healthz req/s",
            f"{claims:.0f} vs {ceiling:.0f} req/s = {claims / max(ceiling, 1e-9):.2f}x",
            claims >= CLAIMS_VS_NOOP * ceiling,
            "speed",
        )
    if paced:
        p99 = paced["claims"]["groups"]["primary"]["latency"]["p99_ms"]
        processes = paced.get("server_processes", 1)
        add(
            f"p99 < {PACED_P99_MS:.0f} ms at an offered {paced['offered_rate']:.0f} claims/s"
            + (f" ({processes} server processes)" if processes > 1 else ""),
            f"p99 {p99} ms over {paced['claims_offered']} claims "
            f"(sent at {paced['achieved_send_rate']:.0f}/s)",
            p99 is not None and p99 < PACED_P99_MS,
            "speed",
        )
    if burst:
        m = burst["mongo"]
        add(
            "units sold == Q (orders pending payment in MongoDB)",
            f"{m['units_sold']} of {burst['quantity']}",
            m["units_sold"] == burst["quantity"],
        )
        add("oversell == 0", f"{m['oversell']}", m["oversell"] == 0)
        add(
            "duplicate orders == 0 (per buyer and key); no buyer over the offer's per-user limit",
            f"{m['duplicate_orders']}; buyers over the limit of {m['per_user_limit']}: "
            f"{m['buyers_over_limit']}",
            m["duplicate_orders"] == 0 and m["buyers_over_limit"] == 0,
        )
        add(
            "every order a buyer was told of is in MongoDB and still holds stock",
            f"missing {m['orders_told_but_missing']}, no longer holding "
            f"{m['orders_told_not_holding_stock']} {m['told_not_holding_examples'] or ''}",
            _told_orders_hold(m),
        )
        add(
            "orders nobody was told of == 0",
            f"{m['orders_nobody_was_told_of']} of {m['orders']}",
            m["orders_nobody_was_told_of"] == 0,
        )
        st = burst["stock"]
        add(
            "units held by orders (MongoDB) + remaining (Redis) == Q",
            f"{st['held_by_orders']} + {st['remaining_in_redis']} of {st['quantity']} "
            f"(Redis holds {st['held_in_redis']})",
            st["balanced"],
        )
        groups = burst["claims"]["groups"]
        outcomes = groups["all"]["outcomes"]
        failures = {
            k: v
            for k, v in outcomes.items()
            if k not in ("order", "sold_out", "offer_not_active", "unanswered")
        }
        retries, frames = burst["retries"], burst["claims"]["unmatched_ws_frames"]
        strays = {k: v for k, v in frames.items() if k.startswith("stray")}
        add(
            "(bench's check) every claim answered; retries get their first answer's order, and "
            "one order per key in every answer and websocket frame",
            f"unanswered {burst['unanswered']['by_kind'] or 0}, failures {failures or 0}, "
            f"retries with another order {retries['order_mismatch']}, keys with several orders "
            f"{retries['keys_with_several_orders']}, websocket frames answering no claim "
            f"{strays or 0}",
            not burst["unanswered"]["total"]
            and not failures
            and not retries["order_mismatch"]
            and not retries["keys_with_several_orders"]
            and not strays,
        )
    runs = [*(report.get("paced_sweep") or []), *([paced] if paced else [])]
    if runs:
        figures, ok = [], True
        for run in runs:
            m, st = run["mongo"], run["stock"]
            figures.append(
                f"{run['offered_rate']:.0f}/s: {m['units_sold']} of {run['claims_offered']}"
                f" (untold {m['orders_nobody_was_told_of']}, told but missing or not holding "
                f"{m['orders_told_but_missing'] + m['orders_told_not_holding_stock']}, "
                f"Redis remaining {st['remaining_in_redis']})"
            )
            ok = ok and m["units_sold"] == run["claims_offered"] == m["orders"]
            ok = ok and m["oversell"] == 0 and m["duplicate_orders"] == 0
            ok = ok and m["buyers_over_limit"] == 0 and m["orders_nobody_was_told_of"] == 0
            ok = ok and _told_orders_hold(m) and st["balanced"]
        add(
            "(paced) every claim an order that holds stock and was told, no oversell, no "
            "duplicates, orders + Redis == n",
            ", ".join(figures),
            ok,
        )
    redis = report.get("redis_limit")
    if redis:
        add(
            "(Redis script alone) every round reserved exactly Q",
            f"{redis['rounds']} rounds",
            redis["every_round_reserved_exactly_q"],
        )
    return verdicts


def print_report(report: dict[str, Any]) -> None:
    print_run_header(report, "`liveshop serve`")
    head = f"{'phase':<36}{'n':>6}{'answers/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  "
    head += "".join(f"{name[:6]:>7}" for name in CPU_COLUMNS)
    print("\n" + " " * 89 + "CPU, % of one core")
    print(head + "\n" + "-" * len(head))

    def row(
        name: str, n: int, rate: float | None, lat: dict[str, Any], cpu: dict[str, float] | None
    ) -> None:
        cells = "".join(f"{cpu.get(k, 0):>6.0f}%" for k in CPU_COLUMNS) if cpu else ""
        print(
            f"{name:<36}{n:>6}{'-' if rate is None else f'{rate:.0f}':>10}"
            f"{ms(lat.get('p50_ms')):>9}{ms(lat.get('p99_ms')):>9}{ms(lat.get('max_ms')):>9}"
            f"  {cells}"
        )

    noop, burst, paced = report.get("noop"), report.get("burst"), report.get("paced")
    if noop:
        name = f"no-op GET /healthz, {noop['connections']} conns"
        row(name, noop["requests"], noop["requests_per_s"], noop["latency"], noop["cpu_pct"])
    if burst:
        c = burst["claims"]
        groups = c["groups"]
        row(
            "burst: every answer",
            c["answers"],
            c["answers_per_s"],
            groups["all"]["latency"],
            burst["cpu_pct"],
        )
        for name in ("primary", "primary_ws", "primary_http", "retry_concurrent", "retry_after"):
            rate = c["primary_answers_per_s"] if name == "primary" else None
            row(f"  {name}", groups[name]["sent"], rate, groups[name]["latency"], None)
    for run in [*(report.get("paced_sweep") or []), *([paced] if paced else [])]:
        c = run["claims"]
        primary = c["groups"]["primary"]["latency"]
        row(_paced_name(run), c["answers"], c["answers_per_s"], primary, run["cpu_pct"])
        if run is paced:  # the target's run: by transport too
            for name in ("primary_ws", "primary_http"):
                group = c["groups"][name]
                row(f"  {name}", group["sent"], None, group["latency"], None)
    redis = report.get("redis_limit")
    if redis:
        row(
            "Redis script alone (redis-py, 64 conns)",
            redis["claims"],
            redis["claims_per_s"],
            {},
            redis["cpu_pct"],
        )
    if burst and noop and redis:
        rate = burst["claims"]["answers_per_s"]
        print(
            f"\nBurst claims/s over the limits: / no-op req/s = "
            f"{rate / max(noop['requests_per_s'], 1e-9):.3f}, / Redis script alone = "
            f"{rate / max(redis['claims_per_s'], 1e-9):.3f}"
        )
    if burst:
        mg, rd = burst["mongo"], burst["redis"]
        print(
            f"\nBurst: {burst['buyers']} buyers ({burst['websockets']['sockets']} sockets, "
            f"{burst['http_connections']} HTTP connections), {burst['quantity']} units, fired in "
            f"{burst['fired_in_ms']} ms; outcomes {burst['claims']['groups']['all']['outcomes']}"
        )
        print(f"Unanswered: {burst['unanswered']}")
        print(
            f"MongoDB: {mg['orders']} orders {mg['by_status']}, units sold {mg['units_sold']}, "
            f"oversell {mg['oversell']}, duplicates {mg['duplicate_orders']}, buyers over limit "
            f"{mg['buyers_over_limit']} (limit {mg['per_user_limit']}), orders nobody was told "
            f"of {mg['orders_nobody_was_told_of']}, told of but missing "
            f"{mg['orders_told_but_missing']}, told of but no longer holding stock "
            f"{mg['orders_told_not_holding_stock']}"
        )
        retries = burst["retries"]
        print(f"Redis after the burst: {rd}; held by orders + remaining: {burst['stock']}")
        print(
            f"Websocket answers: order statuses "
            f"{burst['claims']['order_answer_statuses']}; frames answering no claim "
            f"{burst['claims']['unmatched_ws_frames']}"
        )
        print(
            f"Retries: another order than the first answer {retries['order_mismatch']}; keys "
            f"with several orders {retries['keys_with_several_orders']}; "
            f"refusal code changed {retries['refusal_changed']}; HTTP Idempotent-Replayed on "
            f"concurrent pairs {retries['concurrent_http_pairs_replay_headers']}"
        )
    foreign = report.get("foreign_load_pct")
    if foreign:
        print(f"Other processes' load before each phase (% of a core): {foreign}")
    logs = report.get("server_log", {})
    if logs.get("levels"):
        print(f"Server log levels: {logs['levels']}; events: {logs['events']}")
    for key in ("burst", "paced"):
        hot = (report.get(key) or {}).get("profile")
        if hot:
            print(f"\npy-spy, {key}: server samples by library; top self time")
            for name, share in hot["libraries"]:
                print(f"  {share:5.1f}%  {name}")
            print("  --")
            for name, share in hot["self"][:8]:
                print(f"  {share:5.1f}%  {name}")
    if report.get("error"):
        print(f"\nRUN FAILED: {report['error']}\nServer log tail:\n{report.get('server_log_tail')}")
    print("\nTargets")
    for v in report["targets"]:
        print(f"  {v['verdict']:<5} {v['target']}: {v['figure']}")


def _paced_name(run: dict[str, Any]) -> str:
    processes = run.get("server_processes", 1)
    across = f" x{processes} servers" if processes > 1 else ""
    return f"paced {run['offered_rate']:.0f}/s{across}, every claim an order"
