"""Actor bodies shared by both benchmark apps, so both brokers run the same work."""

from __future__ import annotations

import os
import time

import redis

_client = redis.Redis.from_url(os.environ["REDIS_URL"])
LATENCY_KEY = "bench:latency"


def noop() -> None:
    return None


def sleep_ms(ms: float) -> None:
    time.sleep(ms / 1000)


_failed: set[int] = set()
DONE_KEY = "bench:done"


def fail_once(token: int) -> None:
    """Fail the first run of each token (in this process), succeed on the retry, and count it."""
    if token not in _failed:
        _failed.add(token)
        raise RuntimeError(f"first run of {token} fails")
    _client.incr(DONE_KEY)


def record_start(label: str) -> None:
    """Record when a run started (epoch seconds), to measure a rate over time."""
    _client.rpush(f"bench:starts:{label}", time.time())


def record_wait(sent_at: float, label: str) -> None:
    """Record how long the message waited between send and start, in ms."""
    _client.rpush(f"{LATENCY_KEY}:{label}", (time.time() - sent_at) * 1000)
