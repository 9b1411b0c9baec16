"""What the metrics cost: a 1 x 8 drain of no-ops with every metric on (worker metrics on a port,
the last hour's buckets in Redis) against the same drain with both off, in alternating order.

`python -m bench.metrics_cost [ROUNDS] [N]`: ROUNDS pairs (5 by default) of N messages (30,000);
prints each pair's ratio (on / off) and their spread. Ratios, not rates: the machine is noisy.
"""

from __future__ import annotations

import statistics
import sys

from triage.admin.redis_server import free_port

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


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 30_000
    found = ratios(rounds, n)
    print(f"metrics on / off: median {statistics.median(found):.3f}, range {min(found):.3f}-{max(found):.3f}")
