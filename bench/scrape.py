"""The web process's scrape cost: `GET /metrics` (fleet metrics from Redis) with many messages queued.

`python -m bench.scrape [N]`: a fresh redis-server, N no-op messages queued (100,000 by default),
a real `triage serve` process; prints the median and worst of 30 scrapes, in ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import urllib.request

from triage.admin.redis_server import free_port

from .run import BIN, ROOT, client, fresh_redis, wait_until


def scrape_ms(queued: int, scrapes: int = 30) -> dict[str, float]:
    with fresh_redis() as (env, r):
        client("triage", env, "prefill_noop", queued)
        assert r.hlen("{triage:bench}:items") == queued
        port = free_port()
        server = subprocess.Popen([str(BIN / "triage"), "serve", "--port", str(port)], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}/metrics"

        def get() -> bytes:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: bytes = response.read()
                return body

        def up() -> bool:
            try:
                return b"triage_queue_messages" in get()
            except OSError:
                return False

        try:
            wait_until(up, 30, 0.1)
            times = []
            for _ in range(scrapes):
                started = time.perf_counter()
                get()
                times.append((time.perf_counter() - started) * 1000)
        finally:
            server.terminate()
            server.wait(10)
    return {"median": statistics.median(times), "max": max(times)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"/metrics with {n:,} queued: {scrape_ms(n)}")
