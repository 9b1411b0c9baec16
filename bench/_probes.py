"""Actor bodies shared by both benchmark apps, so both brokers run the same work."""

from __future__ import annotations

import os
import time

from triage.broker.connection import client_from_url

_client = client_from_url(os.environ["REDIS_URL"])  # a cluster client for a redis+cluster:// URL
LATENCY_KEY = "bench:latency"


def noop() -> None:
    return None


CALLS_KEY = "bench:calls"


def one_redis_call() -> None:
    """What a real actor does: one round trip to Redis (here, a counter)."""
    _client.incr(CALLS_KEY)


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


LATE_KEY = "bench:late"


def record_lateness(due: float, label: str) -> None:
    """Record how late the run started after its due time (epoch seconds), in ms."""
    _client.rpush(f"{LATE_KEY}:{label}", (time.time() - due) * 1000)


def retry_after(token: str, delay_ms: int, label: str) -> None:
    """First run: note when it failed and ask for a retry in `delay_ms`; the retry records its lateness."""
    import dramatiq  # the exception both brokers' retry middleware honour

    failed_at = _client.get(f"bench:failed:{token}")
    if failed_at is None:
        now = time.time()
        _client.set(f"bench:failed:{token}", now)
        raise dramatiq.Retry(delay=delay_ms)
    record_lateness(float(failed_at) + delay_ms / 1000, label)
