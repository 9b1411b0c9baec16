"""The web process's read cost with many messages queued: `GET /metrics` (fleet metrics from
Redis) and the dashboard's overview cards (`GET /fragments/overview`, what the page fetches
every 2 seconds).

`python -m bench.scrape [N]`: a fresh redis-server, N no-op messages queued (100,000 by default),
a real `triage serve` process; prints the median and worst of 30 requests of each, in ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import urllib.request

from triage.admin.redis_server import free_port

from .run import BIN, ROOT, client, fresh_redis, wait_until

PATHS = ("/metrics", "/fragments/overview")


def scrape_ms(queued: int, scrapes: int = 30) -> dict[str, dict[str, float]]:
    with fresh_redis() as (env, r):
        client("triage", env, "prefill_noop", queued)
        assert r.hlen("{triage:bench}:items") == queued
        port = free_port()
        server = subprocess.Popen([str(BIN / "triage"), "serve", "--port", str(port)], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"

        def get(path: str = "/metrics") -> bytes:
            with urllib.request.urlopen(url + path, timeout=10) as response:  # noqa: S310 - 127.0.0.1
                body: bytes = response.read()
                return body

        def up() -> bool:
            try:
                return b"triage_queue_messages" in get()
            except OSError:
                return False

        try:
            wait_until(up, 30, 0.1)
            times: dict[str, list[float]] = {path: [] for path in PATHS}
            for _ in range(scrapes):
                for path in PATHS:
                    started = time.perf_counter()
                    get(path)
                    times[path].append((time.perf_counter() - started) * 1000)
        finally:
            server.terminate()
            server.wait(10)
    return {path: {"median": statistics.median(ms), "max": max(ms)} for path, ms in times.items()}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for path, figures in scrape_ms(n).items():
        print(f"{path} with {n:,} queued: median {figures['median']:.1f} ms, worst {figures['max']:.1f} ms")
