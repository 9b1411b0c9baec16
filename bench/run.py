"""`make bench`: stock Dramatiq's RedisBroker and Triage, each against its own fresh Redis, in one run.

Prints one Markdown table (and writes it to bench/last-run.md). Every figure comes from
real `dramatiq` worker processes and a real redis-server started here on a free port.
Machines are noisy: compare the two columns of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench import dlq
from triage.admin.processes import children
from triage.admin.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APPS = ("stock", "triage")


@contextmanager
def fresh_redis() -> Iterator[tuple[dict[str, str], redis.Redis]]:
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        server = RedisServer(port=free_port(), data_dir=Path(tmp), appendonly=False).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(REDIS_URL=server.url, PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        client = redis.Redis.from_url(server.url)
        try:
            yield env, client
        finally:
            client.close()
            server.stop()


def client(app: str, env: dict[str, str], *args: object) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.client", app, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"bench.client {app} {args} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def workers(app: str, env: dict[str, str], queues: list[str], processes: int, threads: int = 8) -> Iterator[int]:
    """A `dramatiq` master with `processes` worker processes; yields the master's pid once all are ready."""
    args = [str(BIN / "dramatiq"), f"bench.{app}_app", "--processes", str(processes), "--threads", str(threads)]
    with supervised([*args, "--queues", *queues], env, "Worker process is ready for action", processes) as pid:
        yield pid


@contextmanager
def supervised(args: list[str], env: dict[str, str], ready_line: str, ready_count: int = 1) -> Iterator[int]:
    """A worker command, started; yields its pid once its output said `ready_line` `ready_count`
    times; SIGTERM at the end (SIGKILL after 60 s)."""
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Semaphore(0)
    log: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if ready_line in line:
                ready.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(ready_count):
            if not ready.acquire(timeout=60):
                raise RuntimeError(f"{args[0]} did not boot:\n" + "".join(log[-30:]))
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        if proc.stdout:
            proc.stdout.close()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.perf_counter()
        time.sleep(interval)
    raise TimeoutError(f"benchmark condition not met within {timeout}s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mb_of_children(master: int) -> float:
    total = 0
    for pid in children(master):
        status = Path(f"/proc/{pid}/status").read_text()
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- scenarios ---------------------------------------------------------------------------


def enqueue_rate(app: str, n: int) -> dict[str, float]:
    with fresh_redis() as (env, _):
        single = client(app, env, "enqueue", n)["rate"]
    result = {"enqueue_single": single}
    if app == "triage":
        with fresh_redis() as (env, _):
            result["enqueue_batch"] = client(app, env, "batch", n * 4)["rate"]
        with fresh_redis() as (env, _):  # without a dedup key, with (twice), without: ABBA
            rates = [
                client(app, env, cmd, n)["rate"] for cmd in ("enqueue", "enqueue_dedup", "enqueue_dedup", "enqueue")
            ]
            result["enqueue_plain"], result["enqueue_dedup"] = (rates[0] + rates[3]) / 2, (rates[1] + rates[2]) / 2
        with fresh_redis() as (env, _):  # plain, a periodic job's ticks (twice), plain: ABBA
            rates = [
                client(app, env, cmd, n)["rate"]
                for cmd in ("enqueue", "enqueue_periodic", "enqueue_periodic", "enqueue")
            ]
            result["enqueue_plain2"], result["enqueue_periodic"] = (rates[0] + rates[3]) / 2, (rates[1] + rates[2]) / 2
        with fresh_redis() as (env, _):  # background sends, with load shedding watching critical, and without
            result["enqueue_bg"] = client(app, env, "enqueue_bg", n)["rate"]
            result["enqueue_bg_unshed"] = client(app, {**env, "TRIAGE_LOAD_SHEDDING": "false"}, "enqueue_bg", n)["rate"]
    return result


def drain_rate(
    app: str, n: int, processes: int, prefill: str = "prefill_noop", extra_env: dict[str, str] | None = None
) -> float:
    key = {"stock": "dramatiq:bench.msgs", "triage": "{triage:bench}:msgs"}[app]
    with fresh_redis() as (env, r):
        env.update(extra_env or {})
        client(app, env, prefill, n)
        assert r.hlen(key) == n
        with workers(app, env, ["bench"], processes):
            started = wait_until(lambda: r.hlen(key) < n, 60, 0.001)
            remaining_at_start = r.hlen(key)
            finished = wait_until(lambda: r.hlen(key) == 0, 600)
    return remaining_at_start / (finished - started)


def retry_rate(app: str, n: int) -> float:
    """Messages per second through a first run that fails and a retry that succeeds (1 process x 8 threads)."""
    with fresh_redis() as (env, r):
        client(app, env, "prefill_fails_once", n)
        with workers(app, env, ["bench"], 1):
            started = time.perf_counter()
            finished = wait_until(lambda: int(r.get("bench:done") or 0) >= n, 600)
    return n / (finished - started)


def flood_latency(app: str, separate: bool, background: int, probes: int, rate: float) -> dict[str, float]:
    label = "bench:latency:critical"
    with fresh_redis() as (env, r):
        client(app, env, "prefill_bg", background, 5)
        groups = [["critical"], ["background"]] if separate else [["critical", "background"]]
        with _many_workers(app, env, groups):
            time.sleep(0.5)  # the flood is being worked on
            client(app, env, "probes", probes, rate)
            wait_until(lambda: r.llen(label) >= probes, 120, 0.05)
        waits = [float(x) for x in r.lrange(label, 0, -1)]
    return {"p50": percentile(waits, 50), "p99": percentile(waits, 99), "max": max(waits)}


@contextmanager
def _many_workers(app: str, env: dict[str, str], groups: list[list[str]]) -> Iterator[None]:
    if len(groups) == 1:
        with workers(app, env, groups[0], 1):
            yield
    else:
        with workers(app, env, groups[0], 1), workers(app, env, groups[1], 1):
            yield


def fairness(app: str, flood: int, count: int, extra_env: dict[str, str] | None = None) -> dict[str, float]:
    """Tenant B's wait (ms) behind tenant A's flood of 2 ms messages, p50 and p99."""
    label = "bench:latency:tenant_b"
    with fresh_redis() as (env, r):
        env.update(extra_env or {})
        client(app, env, "prefill_tenant", flood, 2)
        with workers(app, env, ["bench"], 1):
            time.sleep(0.5)
            client(app, env, "tenant_b", count)
            wait_until(lambda: r.llen(label) >= count, 300, 0.05)
        waits = [float(x) for x in r.lrange(label, 0, -1)]
    return {"p50": percentile(waits, 50), "p99": percentile(waits, 99)}


def delayed_rss(app: str, n: int, settle: float) -> dict[str, float]:
    with fresh_redis() as (env, _), workers(app, env, ["bench"], 1) as master:
        time.sleep(1)
        pids = [master, *children(master)]
        cpu_before = cpu_seconds(pids)
        time.sleep(settle)
        idle_cpu = (cpu_seconds(pids) - cpu_before) / settle * 100
        idle = rss_mb_of_children(master)
    with fresh_redis() as (env, _):
        client(app, env, "prefill_delayed", n)
        with workers(app, env, ["bench"], 1) as master:
            time.sleep(settle)
            loaded = rss_mb_of_children(master)
    return {"idle": idle, "delayed": loaded, "idle_cpu": idle_cpu}


# -- report ------------------------------------------------------------------------------


def run(quick: bool) -> str:
    from bench.lateness import lateness  # it builds on this module's helpers

    scale = 0.2 if quick else 1.0
    n_enqueue, n_drain, n_retry = int(5000 * scale), int(30_000 * scale), int(10_000 * scale)
    n_background, n_probes = int(20_000 * scale), int(200 * scale)
    n_flood, n_delayed, n_dead = int(20_000 * scale), int(100_000 * scale), int(100_000 * scale)
    results: dict[str, dict[str, Any]] = {app: {} for app in APPS}
    for app in APPS:
        print(f"bench: {app} …", file=sys.stderr, flush=True)
        res = results[app]
        res.update(enqueue_rate(app, n_enqueue))
        res["drain_1x8"] = drain_rate(app, n_drain, 1)
        res["drain_2x8"] = drain_rate(app, n_drain, 2)
        if app == "triage":
            res["drain_breaker_1x8"] = drain_rate(app, n_drain, 1, "prefill_noop_breaker")
            res["drain_rate_limited_1x8"] = drain_rate(app, n_drain, 1, "prefill_noop_rate_limited")
            metrics_on = {"TRIAGE_METRICS_PORT": str(free_port())}
            res["drain_metrics_1x8"] = drain_rate(app, n_drain, 1, extra_env=metrics_on)
            res["drain_no_metrics_1x8"] = drain_rate(app, n_drain, 1, extra_env={"TRIAGE_HOURLY_STATS": "false"})
        res["retry"] = retry_rate(app, n_retry)
        res["flood_one"] = flood_latency(app, False, n_background, n_probes, 20)
        res["flood_separate"] = flood_latency(app, True, n_background, n_probes, 20)
        res["fair"] = fairness(app, n_flood, 20)
        res["rss"] = delayed_rss(app, n_delayed, 3 if quick else 5)
        res["late_idle"] = lateness(app, 10 if quick else 40, loaded=False)
        res["late_load"] = lateness(app, 10 if quick else 40, loaded=True)
    with fresh_redis() as (env, _):
        results["triage"]["dlq"] = dlq.timings(env["REDIS_URL"], n_dead)
    return report(results, quick, n_drain, n_retry, n_background, n_flood, n_delayed, n_dead)


def report(
    results: dict[str, dict[str, Any]],
    quick: bool,
    n_drain: int,
    n_retry: int,
    n_bg: int,
    n_flood: int,
    n_delayed: int,
    n_dead: int,
) -> str:
    s, t = results["stock"], results["triage"]

    def row(
        name: str, stock: float | None, triage: float, unit: str, target: str, higher_is_better: bool | None
    ) -> str:
        """`higher_is_better` None: no ratio (a difference, or a figure near zero)."""
        ratio = ""
        if stock and triage and higher_is_better is not None:
            ratio = f"{(triage / stock if higher_is_better else stock / triage):.2f}×"
        stock_text = "—" if stock is None else f"{stock:,.1f} {unit}"
        digits = 2 if unit == "×" else 1  # ratios: two decimals
        return f"| {name} | {stock_text} | {triage:,.{digits}f} {unit} | {ratio} | {target} |"

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{'quick run (1/5 scale)' if quick else 'full run'}; each broker against its own fresh redis-server.",
        "",
        "| measure | stock Dramatiq | Triage | Triage vs stock | target |",
        "|---|---|---|---|---|",
        row("enqueue, single sends", s["enqueue_single"], t["enqueue_single"], "msg/s", "≥ 0.8×", True),
        row("enqueue, batches of 1000", None, t["enqueue_batch"], "msg/s", "≥ 10× single", None),
        row("… batch rate / single-send rate", None, t["enqueue_batch"] / t["enqueue_single"], "×", "≥ 10×", None),
        row(
            "… a periodic job's tick sends (tick, dedup key, record) / plain sends (Triage, alternating)",
            None,
            t["enqueue_periodic"] / t["enqueue_plain2"],
            "×",
            "",
            None,
        ),
        row(
            "… single sends with a dedup key / without (Triage, same Redis, alternating)",
            None,
            t["enqueue_dedup"] / t["enqueue_plain"],
            "×",
            "≥ 0.9× (within 10 %)",
            None,
        ),
        row(
            "… background single sends, load shedding on / off (Triage)",
            None,
            t["enqueue_bg"] / t["enqueue_bg_unshed"],
            "×",
            "≥ 0.95× (cost ≤ 5 %)",
            None,
        ),
        row(
            f"drain {n_drain:,} no-ops, 1 process × 8 threads", s["drain_1x8"], t["drain_1x8"], "msg/s", "≥ 0.8×", True
        ),
        row(
            f"drain {n_drain:,} no-ops, 2 processes × 8 threads",
            s["drain_2x8"],
            t["drain_2x8"],
            "msg/s",
            "≥ 0.8×",
            True,
        ),
        row(
            f"drain {n_drain:,} no-ops behind a closed circuit breaker, 1 × 8",
            s["drain_1x8"],
            t["drain_breaker_1x8"],
            "msg/s",
            "≥ 0.8×",
            True,
        ),
        row(
            "… closed-breaker drain / plain drain (Triage, 1 × 8)",
            None,
            t["drain_breaker_1x8"] / t["drain_1x8"],
            "×",
            "≥ 0.9× (cost ≤ 10 %)",
            None,
        ),
        row(
            "… drain of an actor with a rate limit (never binding) / plain drain (Triage, 1 × 8)",
            None,
            t["drain_rate_limited_1x8"] / t["drain_1x8"],
            "×",
            "",
            None,
        ),
        row(
            "… drain with every metric on (TRIAGE_METRICS_PORT, hourly buckets) / all off (Triage, 1 × 8)",
            None,
            t["drain_metrics_1x8"] / t["drain_no_metrics_1x8"],
            "×",
            "≥ 0.95× (cost ≤ 5 %)",
            None,
        ),
        row(
            f"{n_retry:,} messages failing once, retried (1–10 ms backoff), 1 × 8",
            s["retry"],
            t["retry"],
            "msg/s",
            "≥ 0.8×",
            True,
        ),
    ]
    for key, name in (("flood_one", "one worker for all tiers"), ("flood_separate", "a worker per tier")):
        for stat in ("p50", "p99", "max"):
            target = "≤ 5 ms" if stat == "p99" else ""
            lines.append(
                row(
                    f"critical wait under {n_bg:,} × 5 ms background, {name}, {stat}",
                    s[key][stat],
                    t[key][stat],
                    "ms",
                    target,
                    False,
                )
            )
    lines += [
        row(f"tenant B wait behind tenant A's {n_flood:,} (p50)", s["fair"]["p50"], t["fair"]["p50"], "ms", "", False),
        row(
            f"tenant B wait behind tenant A's {n_flood:,} (p99)",
            s["fair"]["p99"],
            t["fair"]["p99"],
            "ms",
            "≤ 50 ms",
            False,
        ),
        row("idle worker CPU (1 process × 8 threads)", s["rss"]["idle_cpu"], t["rss"]["idle_cpu"], "%", "~0 %", None),
        row("worker RSS, idle", s["rss"]["idle"], t["rss"]["idle"], "MB", "", None),
        row(
            f"worker RSS with {n_delayed:,} delayed messages", s["rss"]["delayed"], t["rss"]["delayed"], "MB", "", None
        ),
        row(
            "RSS growth from delayed messages",
            s["rss"]["delayed"] - s["rss"]["idle"],
            t["rss"]["delayed"] - t["rss"]["idle"],
            "MB",
            "≤ 20 MB",
            None,
        ),
    ]
    for key, name, target in (
        ("late_idle", "idle worker", "≤ 10 ms"),
        ("late_load", "worker under 300 msg/s", "≤ 20 ms"),
    ):
        for case in ("delay 20 ms", "delay 100 ms", "delay 250 ms", "Retry(delay=100)"):
            lines.append(
                row(
                    f"{case}: start after due, p99, {name}",
                    s[key][case]["p99"],
                    t[key][case]["p99"],
                    "ms",
                    target,
                    False,
                )
            )
    for key, name in (
        ("page", "a page of 50, newest first"),
        ("page_actor", "a page of 50, one actor (1 in 5)"),
        ("page_tenant", "a page of 50, one tenant (1 in 50)"),
        ("page_two", "a page of 50, one actor and one error type (1 in 15)"),
        ("summary", "summary by actor, error and reason"),
        ("summary_since", "summary of the last hour"),
    ):
        target = "≤ 100 ms" if key.startswith("page") else ""
        lines.append(row(f"dead letters ({n_dead:,}): {name}", None, t["dlq"][key], "ms", target, None))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1/5 of the volumes, for a smoke run")
    from bench import tenants as tenant_bench  # it builds on this module's helpers

    quick = parser.parse_args().quick
    table = run(quick)
    seconds = 12.0 if quick else 60.0
    table += "\n\n" + tenant_bench.report(tenant_bench.run(seconds), seconds)
    print(table)
    (Path(__file__).parent / "last-run.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
