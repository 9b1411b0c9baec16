"""`python -m bench.tenants [--seconds S]`: per-tenant limits under a flood (Triage only).

Tenant A floods 50,000 messages of 2 ms on a default-tier queue; tenants B, C, D and E each
send 10 messages/s for S seconds (60 by default). Measured with and without A's flood: the
wait (send to start) of B-E, p50 and p99; A's starts over every 60 s window against its RPM
limit plus burst. Then the fetch cost with 10,000 tenants queued, 9,990 of them held back, and
while the fetches forget 10,000 idle tenants (`limits.TENANT_SWEEP_PER_FETCH` a fetch).
Every figure comes from a real `dramatiq` worker (1 process x 8 threads) and a redis-server
started here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from dramatiq.message import Message

from bench.run import client, fresh_redis, percentile, wait_until, workers
from triage.broker.consumer import TriageConsumer
from triage.broker.delivery import redis_id_of
from triage.broker.limits import TENANT_SWEEP_PER_FETCH
from triage.broker.redis_broker import TriageBroker

RPM, BURST, RATE_EACH, FLOOD = 1200.0, 20.0, 10.0, 50_000


def flood_run(flood: bool, seconds: float) -> dict[str, float]:
    with fresh_redis() as (env, r):
        env = {**env, "TRIAGE_TENANT_RPM_DEFAULT": f"{RPM:g}", "TRIAGE_TENANT_BURST_DEFAULT": f"{BURST:g}"}
        if flood:
            client("triage", env, "prefill_flood", FLOOD, 2)
        with workers("triage", env, ["bench"], 1):
            sent = int(client("triage", env, "tenants_paced", seconds, RATE_EACH)["rate"] * seconds)
            labels = [f"bench:latency:tenant_{t}" for t in "BCDE"]
            wait_until(lambda: sum(r.llen(label) for label in labels) >= sent, 120, 0.05)
            starts = sorted(float(x) for x in r.lrange("bench:starts:A", 0, -1))
        waits = [float(x) for label in labels for x in r.lrange(label, 0, -1)]
    window_max = 0
    for i, start in enumerate(starts):  # the most starts of A in any 60 s window
        j = i
        while j < len(starts) and starts[j] < start + 60:
            j += 1
        window_max = max(window_max, j - i)
    span = (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    return {
        "p50": percentile(waits, 50),
        "p99": percentile(waits, 99),
        "a_starts": float(len(starts)),
        "a_rate_per_min": len(starts) / span * 60 if span else 0.0,
        "a_max_per_60s": float(window_max),
    }


def parked_fetch_ms(url: str, tenants: int = 10_000, free: int = 10) -> float:
    """Median time of a fetch (and the ack of what it got) with `tenants` held back at their
    in-flight cap and `free` tenants with work."""
    broker = TriageBroker(url=url, namespace="bench", middleware=[], tenant_limits=lambda q: ((0, 0, 1, 0), {}))
    queue = "bench"
    for start in range(0, tenants, 1000):
        batch: list[Message[Any]] = [
            Message(queue, "job", (), {}, {"tenant": f"t{i}"}) for i in range(start, start + 1000)
        ]
        broker.enqueue_batch(batch * 2)
    consumer = broker.consume(queue, prefetch=100_000)
    while len(consumer.cache) < tenants and consumer._fetch(100_000):
        pass  # one message of each tenant in flight: each is at its cap
    consumer.cache.clear()
    broker.enqueue_batch([Message(queue, "job", (), {}, {"tenant": f"free{i}"}) for i in range(free)] * 50)
    for _ in range(20):  # park the rest
        consumer._fetch(100)
        for message in list(consumer.cache):
            consumer.ack(message)
        consumer.cache.clear()
    times = [_timed_fetch(consumer) for _ in range(30)]
    broker.close()
    return statistics.median(times)


def _timed_fetch(consumer: TriageConsumer) -> float:
    """Milliseconds one fetch of up to 100 messages takes; what it got is then acked."""
    started = time.perf_counter()
    consumer._fetch(100)
    elapsed = (time.perf_counter() - started) * 1000
    for message in list(consumer.cache):
        consumer.ack(message)
    consumer.cache.clear()
    return elapsed


def sweeping_fetch_ms(url: str, tenants: int = 10_000, free: int = 10, idle_ms: int = 3000) -> tuple[float, int]:
    """Median time of a fetch (and the ack of what it got) of `free` tenants' work while the
    fetches forget `tenants` idle ones (each had a rate-limited message, acked, then stayed idle
    past `idle_ms`); and how many fetches it took to forget them all."""
    broker = TriageBroker(
        url=url,
        namespace="bench",
        middleware=[],
        tenant_limits=lambda q: ((60_000, 1, 0, 0), {}),
        tenant_idle_ms=idle_ms,
    )
    queue, idle = "bench", broker.keys("bench").tenants_idle
    consumer = broker.consume(queue, prefetch=100_000)
    for start in range(0, tenants, 1000):
        broker.enqueue_batch([Message(queue, "job", (), {}, {"tenant": f"t{i}"}) for i in range(start, start + 1000)])
        consumer._fetch(100_000)
        ids = [redis_id_of(message) for message in consumer.cache]
        consumer.cache.clear()
        consumer._write_acks(consumer.shards[0], ids)  # one ack call, as worker threads acking together make
    time.sleep(idle_ms / 1000 + 0.05)
    times, fetches = [], 0
    while broker.client.zcard(idle) > free or fetches < 30:  # the free tenants stay (busy)
        broker.enqueue_batch([Message(queue, "job", (), {}, {"tenant": f"free{i}"}) for i in range(free)])
        times.append(_timed_fetch(consumer))
        fetches += 1
        assert fetches <= tenants // TENANT_SWEEP_PER_FETCH + 60, "the idle tenants are not forgotten"
    broker.close()
    return statistics.median(times[:30]), fetches


def run(seconds: float) -> dict[str, Any]:
    quiet = flood_run(False, seconds)
    flooded = flood_run(True, seconds)
    with fresh_redis() as (env, _):
        fetch_ms = parked_fetch_ms(env["REDIS_URL"])
    with fresh_redis() as (env, _):
        alone_ms = parked_fetch_ms(env["REDIS_URL"], tenants=0)
    with fresh_redis() as (env, _):
        sweeping_ms, sweep_fetches = sweeping_fetch_ms(env["REDIS_URL"])
    with fresh_redis() as (env, _):
        not_sweeping_ms, _ = sweeping_fetch_ms(env["REDIS_URL"], tenants=0)
    return {
        "quiet": quiet,
        "flooded": flooded,
        "parked_fetch_ms": fetch_ms,
        "alone_fetch_ms": alone_ms,
        "sweeping_fetch_ms": sweeping_ms,
        "not_sweeping_fetch_ms": not_sweeping_ms,
        "sweep_fetches": sweep_fetches,
    }


def report(result: dict[str, Any], seconds: float) -> str:
    q, f = result["quiet"], result["flooded"]
    return "\n".join(
        [
            f"Tenant limits ({seconds:g} s, default tier RPM {RPM:g}, burst {BURST:g}; B-E {RATE_EACH:g} msg/s each):",
            "",
            "| measure | without A's flood | with A's 50,000 | target |",
            "|---|---|---|---|",
            f"| B-E wait p50 | {q['p50']:.1f} ms | {f['p50']:.1f} ms | |",
            f"| B-E wait p99 | {q['p99']:.1f} ms | {f['p99']:.1f} ms | ≤ 2× without |",
            f"| A: most starts in any 60 s | — | {f['a_max_per_60s']:.0f} | ≤ RPM + burst = {RPM + BURST:g} |",
            f"| A: rate over the run | — | {f['a_rate_per_min']:.0f}/min | ≤ {RPM:g}/min (+ burst) |",
            f"| fetch of 10 free tenants' work, median | {result['alone_fetch_ms']:.2f} ms alone | "
            f"{result['parked_fetch_ms']:.2f} ms beside 10,000 held back | same |",
            f"| fetch of 10 free tenants' work, median | {result['not_sweeping_fetch_ms']:.2f} ms alone | "
            f"{result['sweeping_fetch_ms']:.2f} ms forgetting 10,000 idle tenants "
            f"({TENANT_SWEEP_PER_FETCH} a fetch: {result['sweep_fetches']} fetches) | ≤ 1 ms more |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(report(run(args.seconds), args.seconds))


if __name__ == "__main__":
    main()
