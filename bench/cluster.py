"""`make bench-cluster`: one hot queue drained by real `dramatiq` workers, on one Redis and on a
local 3-master Redis Cluster, with the queue in one shard and in three, in one run.

Each setup starts its own Redis (or cluster) on free ports, sends N no-op messages to queue
`bench` with single sends (their rate is the enqueue column), then starts the workers and times
how fast they drain it. Every setup runs `--runs` times, in turn (A B C D, A B C D, ...); the table
gives the median and the range. All of it shares this machine's cores: on a 2-core machine the
workers are the bottleneck long before three Redis nodes are, and that is what the table shows.
The last columns say how far each setup would go before Redis is: the CPU each node spent per
1,000 messages, and the rate at which the busiest node would use a whole core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.run import BIN, ROOT, client, cpu_seconds, wait_until, workers
from triage.admin.redis_server import RedisServer, free_port
from triage.broker.redis_broker import TriageBroker
from triage.testing import redis_cluster

SETUPS = (("one Redis", 1), ("one Redis", 3), ("3-master cluster", 1), ("3-master cluster", 3))


@contextlib.contextmanager
def redis_of(kind: str) -> Iterator[tuple[str, list[int]]]:
    """The URL of a fresh Redis or cluster, and its server pids."""
    if kind == "one Redis":
        with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
            server = RedisServer(port=free_port(), data_dir=Path(tmp), appendonly=False).start()
            try:
                assert server.process is not None
                yield server.url, [server.process.pid]
            finally:
                server.stop()
    else:
        with redis_cluster(appendonly=False) as cluster:
            yield cluster.url, [node.process.pid for node in cluster.nodes if node.process is not None]


def one_run(kind: str, shards: int, n: int, processes: int) -> tuple[float, float, float, float]:
    """(enqueue rate, drain rate) in msg/s, and Redis's CPU ms per 1,000 messages drained: all
    nodes', and the busiest node's (what bounds the rate one setup can reach)."""
    with redis_of(kind) as (url, pids):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(
            REDIS_URL=url,
            PYTHONUNBUFFERED="1",
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            TRIAGE_QUEUES=json.dumps({"bench": {"tier": "default", "shards": shards}}),
        )
        enqueue = client("triage", env, "enqueue", n)["rate"]
        broker = TriageBroker(url=url, middleware=[], shards=lambda queue: shards)
        try:
            assert broker.counts("bench")[0] == n
            with workers("triage", env, ["bench"], processes):
                started = wait_until(lambda: broker.counts("bench")[0] < n, 60, 0.002)
                left, before = broker.counts("bench"), [cpu_seconds([pid]) for pid in pids]
                finished = wait_until(lambda: sum(broker.counts("bench")) == 0, 600, 0.02)
                used = [cpu_seconds([pid]) - was for pid, was in zip(pids, before, strict=True)]
        finally:
            broker.close()
    drained = left[0] + left[2]
    per_1000 = 1000 / drained * 1000  # seconds of CPU -> ms per 1,000 messages
    return enqueue, drained / (finished - started), sum(used) * per_1000, max(used) * per_1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    figures: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {setup: [] for setup in SETUPS}
    for _ in range(options.runs):
        for kind, shards in SETUPS:
            figures[(kind, shards)].append(one_run(kind, shards, options.messages, options.processes))
            print(kind, shards, figures[(kind, shards)][-1], file=sys.stderr)
    base = statistics.median(run[1] for run in figures[SETUPS[0]])
    lines = [
        f"Drain of one hot queue: {options.messages:,} no-op messages, {options.processes} worker processes x 8 "
        f"threads, full default stack; {options.runs} runs each, median (range). {platform.node()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.",
        "",
        "| setup | shards | single-send enqueue msg/s | drain msg/s | drain vs one Redis, 1 shard "
        "| Redis CPU per 1,000 drained, all nodes | busiest node | one core's worth of the busiest node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kind, shards), runs in figures.items():
        enq, drain, cpu, busiest = ([run[i] for run in runs] for i in range(4))
        lines.append(
            f"| {kind} | {shards} | {statistics.median(enq):,.0f} ({min(enq):,.0f}–{max(enq):,.0f}) "
            f"| {statistics.median(drain):,.0f} ({min(drain):,.0f}–{max(drain):,.0f}) "
            f"| {statistics.median(drain) / base:.2f}× "
            f"| {statistics.median(cpu):.0f} ms ({min(cpu):.0f}–{max(cpu):.0f}) "
            f"| {statistics.median(busiest):.0f} ms ({min(busiest):.0f}–{max(busiest):.0f}) "
            f"| ≈ {1_000_000 / statistics.median(busiest):,.0f} msg/s |"
        )
    table = "\n".join(lines)
    print(table)
    (ROOT / "bench" / "last-cluster-run.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
