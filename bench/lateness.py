"""How late delayed messages and retries start after their due time: stock Dramatiq and Triage.

`python -m bench.lateness [--probes N] [--app stock|triage]`: a fresh redis-server (default `hz
10`) per case, a real `dramatiq` worker (1 process × 8 threads) on `bench`, probes sent one at
a time so each finds the worker as the case says: idle (nothing else to do), or under a steady
load (300 no-ops a second on the same queue). Lateness = the run's start minus its due time
(the send plus the delay, or the Retry's raise plus its delay), in ms; p50, p99, max per case.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .run import ROOT, client, fresh_redis, percentile, wait_until, workers

DELAYS = (20, 100, 250)
LOAD_RATE = 300


@contextmanager
def steady_load(app: str, env: dict[str, str], seconds: float) -> Iterator[None]:
    producer = subprocess.Popen(
        [sys.executable, "-m", "bench.client", app, "steady", str(seconds), str(LOAD_RATE)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # the load is flowing
        yield
    finally:
        producer.terminate()
        producer.wait(10)


def lateness(app: str, probes: int, loaded: bool) -> dict[str, dict[str, float]]:
    """Per case (`delay 20 ms`, ..., `Retry(delay=100)`): p50, p99 and max lateness in ms."""
    cases = [("late_probes", d) for d in DELAYS] + [("retry_probes", 100)]
    figures: dict[str, dict[str, float]] = {}
    with fresh_redis() as (env, r), workers(app, env, ["bench"], 1):
        for command, delay in cases:
            key = f"bench:late:{command}:{delay}"
            budget = probes * (delay / 1000 + 0.2) + 30
            with steady_load(app, env, budget) if loaded else _nothing():
                client(app, env, command, probes, delay)
                wait_until(lambda key=key: r.llen(key) >= probes, 30, 0.05)  # type: ignore[misc]
            values = [float(x) for x in r.lrange(key, 0, -1)]
            name = f"delay {delay} ms" if command == "late_probes" else f"Retry(delay={delay})"
            figures[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)}
    return figures


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--app", choices=("stock", "triage"), action="append")
    options = parser.parse_args()
    print("| broker | worker | case | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for app in options.app or ("stock", "triage"):
        for loaded in (False, True):
            for case, f in lateness(app, options.probes, loaded).items():
                state = f"steady {LOAD_RATE}/s" if loaded else "idle"
                print(f"| {app} | {state} | {case} | {f['p50']:.1f} | {f['p99']:.1f} | {f['max']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
