"""`make bench-targets`: the performance targets' rows, stock Dramatiq, Triage and Celery, several rounds.

Each round measures every row for every app, one app after the other, each against its own
fresh redis-server, with real worker processes (`dramatiq`, `celery worker`). The table gives
each figure's spread over the rounds (lowest–highest, median) and the targets. Triage runs its
full default stack (dedup, breakers, tenant limits, metrics' last hour on). Celery runs as its
users' documents run it (bench/celery_app.py): threads pool of 8 per process, `-Q` per tier,
prefetch multiplier 4, `acks_late`. Writes bench/last-targets.md.

  python -m bench.targets [--rounds 3] [--quick] [--apps triage] [--env TRIAGE_SWITCH_INTERVAL_MS=1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from bench.run import BIN, ROOT, client, fairness, fresh_redis, percentile, supervised, wait_until, workers

APPS = ("stock", "triage", "celery")
Figures = dict[str, float]


@contextmanager
def celery_workers(env: dict[str, str], queues: list[str], processes: int, threads: int = 8) -> Iterator[None]:
    """`processes` Celery workers of `threads` threads each; yields once all are ready."""
    with ExitStack() as stack:
        for i in range(processes):
            stack.enter_context(_celery_worker(env, queues, f"w{i}@bench", threads))
        yield


@contextmanager
def _celery_worker(env: dict[str, str], queues: list[str], name: str, threads: int) -> Iterator[None]:
    args = [str(BIN / "celery"), "-A", "bench.celery_app", "worker", "-Q", ",".join(queues), "-n", name]
    args += ["--pool", "threads", "--concurrency", str(threads), "--prefetch-multiplier", "4", "-l", "info"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with supervised(args, env, " ready."):
        yield


@contextmanager
def app_workers(app: str, env: dict[str, str], queues: list[str], processes: int) -> Iterator[None]:
    if app == "celery":
        with celery_workers(env, queues, processes):
            yield
    else:
        with workers(app, env, queues, processes):
            yield


def remaining(app: str, r: redis.Redis) -> Callable[[], int]:
    """Messages of `bench` not yet done (queued, prefetched or running)."""
    if app == "celery":
        return lambda: int(r.llen("bench")) + int(r.hlen("unacked"))
    key = {"stock": "dramatiq:bench.msgs", "triage": "{triage:bench}:msgs"}[app]
    return lambda: int(r.hlen(key))


def drain(app: str, n: int, processes: int, prefill: str, extra_env: dict[str, str] | None = None) -> float:
    with fresh_redis() as (env, r):
        env.update(extra_env or {})
        client(app, env, prefill, n)
        left = remaining(app, r)
        assert left() == n, (app, left(), n)
        with app_workers(app, env, ["bench"], processes):
            started = wait_until(lambda: left() < n, 60, 0.001)
            at_start = left()
            finished = wait_until(lambda: left() == 0, 900)
    return at_start / (finished - started)


def flood(app: str, separate: bool, background: int, probes: int, extra_env: dict[str, str] | None = None) -> float:
    """Critical wait p99 (ms) under a flood of 5 ms background messages."""
    with fresh_redis() as (env, r):
        env.update(extra_env or {})
        client(app, env, "prefill_bg", background, 5)
        with ExitStack() as stack:
            for queues in [["critical"], ["background"]] if separate else [["critical", "background"]]:
                stack.enter_context(app_workers(app, env, queues, 1))
            time.sleep(0.5)
            client(app, env, "probes", probes, 20)
            wait_until(lambda: r.llen("bench:latency:critical") >= probes, 120, 0.05)
        waits = [float(x) for x in r.lrange("bench:latency:critical", 0, -1)]
    return percentile(waits, 99)


def tenant_b(app: str, flood_size: int, extra_env: dict[str, str] | None = None) -> float:
    """Tenant B's wait p99 (ms) behind tenant A's flood of 2 ms messages."""
    return fairness(app, flood_size, 20, extra_env)["p99"]


def one_round(app: str, scale: float, extra_env: dict[str, str] | None = None) -> Figures:
    n_send, n_drain, n_flood = int(5000 * scale), int(20_000 * scale), int(20_000 * scale)
    n_probes = int(200 * scale)
    figures: Figures = {}
    if app != "celery":
        with fresh_redis() as (env, _):
            env.update(extra_env or {})
            figures["send"] = client(app, env, "enqueue", n_send)["rate"]
    if app == "triage":
        with fresh_redis() as (env, _):
            figures["batch"] = client(app, env, "batch", n_send * 10)["rate"]
    for processes in (1, 2):
        figures[f"noop_{processes}"] = drain(app, n_drain, processes, "prefill_noop", extra_env)
        figures[f"call_{processes}"] = drain(app, n_drain, processes, "prefill_redis_call", extra_env)
    figures["flood_one"] = flood(app, False, n_flood, n_probes, extra_env)
    figures["flood_separate"] = flood(app, True, n_flood, n_probes, extra_env)
    if app != "celery":
        figures["tenant_b"] = tenant_b(app, n_flood, extra_env)
    return figures


ROWS: list[tuple[str, str, str, str]] = [
    # key, label, unit, target (on Triage)
    ("send", "enqueue, single sends", "msg/s", "≥ 1.0× stock"),
    ("batch", "enqueue, batches of 1000", "msg/s", "≥ 100,000 msg/s"),
    ("noop_1", "drain {n:,} no-ops, 1 process × 8 threads", "msg/s", "≥ 1.3× stock"),
    ("noop_2", "drain {n:,} no-ops, 2 processes × 8 threads", "msg/s", "≥ 1.3× stock"),
    ("call_1", "drain {n:,} one-Redis-call actors, 1 × 8", "msg/s", "≥ 1.1× stock"),
    ("call_2", "drain {n:,} one-Redis-call actors, 2 × 8", "msg/s", "≥ 1.1× stock"),
    ("flood_one", "critical wait p99 under {n:,} × 5 ms background, one worker for all tiers", "ms", "≤ 2 ms"),
    ("flood_separate", "critical wait p99 under {n:,} × 5 ms background, a worker per tier", "ms", "≤ 2 ms"),
    ("tenant_b", "tenant B wait p99 behind tenant A's {n:,} × 2 ms", "ms", "≤ 15 ms"),
]


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    fmt = (lambda v: f"{v:,.0f}") if max(values) >= 100 else (lambda v: f"{v:,.1f}")
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(min(values))}–{fmt(max(values))} ({fmt(statistics.median(values))})"


def ratios(ours: list[float], theirs: list[float]) -> str:
    """Triage / another per round (same round, same machine state): lowest–highest."""
    pairs = [a / b for a, b in zip(ours, theirs, strict=False) if b]
    if not pairs:
        return ""
    return f"{min(pairs):.2f}–{max(pairs):.2f}×" if len(pairs) > 1 else f"{pairs[0]:.2f}×"


def report(results: dict[str, list[Figures]], rounds: int, quick: bool) -> str:
    lines = [
        f"Machine: {platform.machine()}, {_cores()} cores, Python {platform.python_version()}, "
        f"{rounds} round(s){' (quick volumes)' if quick else ''}; each figure: lowest–highest (median).",
        "",
        "| measure | stock Dramatiq | Triage | Celery | Triage vs stock (per round) | Triage vs Celery | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label, unit, target in ROWS:
        cols = {app: [r[key] for r in results[app] if key in r] for app in APPS}
        cells = [f"{spread(cols[app])} {unit}" if cols[app] else "—" for app in APPS]
        vs = ratios(cols["triage"], cols["stock"]) if unit == "msg/s" else ""
        vs_celery = ratios(cols["triage"], cols["celery"]) if unit == "msg/s" else ""
        name = label.format(n=int(20_000 * (0.2 if quick else 1)))
        lines.append(f"| {name} | {' | '.join(cells)} | {vs} | {vs_celery} | {target} |")
    return "\n".join(lines) + "\n"


def _cores() -> int:
    return os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a fifth of the volumes")
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for every worker and client")
    opts = parser.parse_args()
    apps = opts.apps.split(",")
    extra_env = dict(item.split("=", 1) for item in opts.env)
    results: dict[str, list[Figures]] = {app: [] for app in APPS}
    for i in range(opts.rounds):
        for app in apps:
            print(f"bench.targets: round {i + 1}, {app} …", file=sys.stderr, flush=True)
            results[app].append(one_round(app, 0.2 if opts.quick else 1.0, extra_env))
            print(f"  {json.dumps(results[app][-1])}", file=sys.stderr, flush=True)
    table = report(results, opts.rounds, opts.quick)
    print(table)
    Path(ROOT / "bench" / "last-targets.md").write_text(table)


if __name__ == "__main__":
    main()
