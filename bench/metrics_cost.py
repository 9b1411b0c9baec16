"""What the metrics cost: a 1 x 8 drain of no-ops with every metric on (worker metrics on a port,
the last hour's buckets in Redis) against the same drain with both off, in alternating order;
and, less noisy, the time the worker metrics' hooks add to one message, in process.

`python -m bench.metrics_cost [ROUNDS] [N]`: ROUNDS pairs (5 by default) of N messages (30,000);
prints each pair's ratio (on / off) and their spread. Ratios, not rates: the machine is noisy.
"""

from __future__ import annotations

import statistics
import sys
import time

from dramatiq import Message
from dramatiq.broker import MessageProxy

from triage.admin.redis_server import free_port
from triage.middleware.metrics import WorkerMetrics

from .run import drain_rate

OFF = {"TRIAGE_HOURLY_STATS": "false"}


def ratios(rounds: int, n: int) -> list[float]:
    found = []
    for i in range(rounds):
        on = {"TRIAGE_METRICS_PORT": str(free_port())}
        if i % 2:
            on_rate, off_rate = drain_rate("triage", n, 1, extra_env=on), drain_rate("triage", n, 1, extra_env=OFF)
        else:
            off_rate, on_rate = drain_rate("triage", n, 1, extra_env=OFF), drain_rate("triage", n, 1, extra_env=on)
        found.append(on_rate / off_rate)
        print(f"round {i + 1}: on {on_rate:,.0f}/s, off {off_rate:,.0f}/s, ratio {on_rate / off_rate:.3f}", flush=True)
    return found


def hook_cost_us(n: int = 200_000) -> float:
    """Microseconds the worker metrics' before/after hooks add to one message (tallies only: the
    once-a-second flush to the multiprocess files and Redis is not per message)."""
    metrics = WorkerMetrics(port=0, host="127.0.0.1", tier_of=lambda queue: "default")
    metrics._tallying = True  # as after_process_boot leaves it, without its flush thread
    message = MessageProxy(Message(queue_name="bench", actor_name="noop", args=(), kwargs={}, options={}))
    started = time.perf_counter()
    for _ in range(n):
        metrics.before_process_message(None, message)  # type: ignore[arg-type]
        metrics.after_process_message(None, message, result=None)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / n * 1e6


if __name__ == "__main__":
    print(f"worker metrics hooks: {hook_cost_us():.1f} µs per message", flush=True)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 30_000
    found = ratios(rounds, n)
    print(f"metrics on / off: median {statistics.median(found):.3f}, range {min(found):.3f}-{max(found):.3f}")
