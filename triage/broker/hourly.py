"""The last hour of each queue, from per-minute buckets in Redis that workers write in batches.

Guarantees:
- A worker process adds what it ran to `{ns:Q}:minute:<unix minute>` hashes (fields
  `FIELDS`) in one pipelined round trip per flush (about once a second), whatever the number
  of messages: no extra round trip per message. Each bucket expires `KEEP_SECONDS` after its
  minute began, so Redis holds about 62 buckets per queue and nothing needs pruning.
- `last_hour` sums the 60 buckets that end with the current minute, in one round trip for all
  the queues: succeeded, failed (every run that raised: retried, dead-lettered or failed),
  retried, dead-lettered, and the mean run time and wait (send to first start) of those runs.
- Waits are also counted per bucket of `BUCKETS` (fields `WAIT_FIELDS`, the bounds of the
  worker's Prometheus histogram), so `wait_quantile` estimates a percentile of the wait over
  any run of minutes (within the bucket it falls in).
- `minutes` returns each minute of the hour, oldest first (the dashboard's charts), from the
  same single read.
- Minutes are by each worker's clock: a skew of a few seconds moves a few messages to a
  neighbouring minute, and at most a minute's worth in or out of the hour.
- `record` is one non-transactional pipeline of HINCRBYs: the caller (the worker metrics
  middleware) keeps a tally whose write raised and adds it to the next one. A connection lost
  after Redis applied the increments but before the reply came back counts that second twice:
  these are operator figures, not a ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

import redis

from .clock import now_ms
from .keys import QueueKeys

# Histogram bounds in seconds (the worker metrics' buckets); a wait above the last is in `+Inf`.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_FIELDS = (*(f"wait_le_{round(bound * 1000)}" for bound in BUCKETS), "wait_le_inf")
FIELDS = ("done", "failed", "retried", "dead", "runs", "run_ms", "waits", "wait_ms", *WAIT_FIELDS)
MINUTES = 60
KEEP_SECONDS = (MINUTES + 2) * 60
Tally = Counter[tuple[str, str]]  # (queue, field) -> amount


class LastHour(TypedDict):
    succeeded_last_hour: int
    failed_last_hour: int
    retried_last_hour: int
    dead_lettered_last_hour: int
    avg_run_seconds_last_hour: float
    avg_wait_seconds_last_hour: float


def current_minute(now: float | None = None) -> int:
    """The unix minute of `now` (seconds; default: this process's clock, `clock.now_ms`)."""
    return int(now // 60) if now is not None else now_ms() // 60_000


def record(
    client: redis.Redis, keys_of: Callable[[str], QueueKeys], tally: Mapping[tuple[str, str], int], minute: int
) -> None:
    """Add `tally` to each queue's bucket of `minute`, in one round trip (raises redis.RedisError)."""
    pipe = client.pipeline(transaction=False)
    touched: set[str] = set()
    for (queue, field), amount in tally.items():
        if amount:
            key = keys_of(queue).minute(minute)
            pipe.hincrby(key, field, int(amount))
            touched.add(key)
    for key in touched:
        pipe.expireat(key, minute * 60 + KEEP_SECONDS)
    if touched:
        pipe.execute()


def minutes(
    client: redis.Redis,
    keys_of: Callable[[str], QueueKeys],
    queues: Iterable[str],
    now: float | None = None,
    count: int = MINUTES,
) -> dict[str, list[dict[str, int]]]:
    """Per queue, its last `count` minutes (ending with the current one), oldest first: each
    minute's `FIELDS` (0 where nothing ran). One round trip for all the queues."""
    names = list(queues)
    end = current_minute(now)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        keys = keys_of(queue)
        for minute in range(end - count + 1, end + 1):
            pipe.hmget(keys.minute(minute), FIELDS)
    replies = iter(pipe.execute())
    return {
        queue: [
            {field: int(value or 0) for field, value in zip(FIELDS, next(replies), strict=True)} for _ in range(count)
        ]
        for queue in names
    }


def summed(buckets: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The fields of several minutes added up."""
    sums = dict.fromkeys(FIELDS, 0)
    for bucket in buckets:
        for field in FIELDS:
            sums[field] += bucket.get(field, 0)
    return sums


def wait_quantile(sums: Mapping[str, int], q: float) -> float | None:
    """The `q` quantile of the waits (seconds) in summed minutes, estimated as Prometheus's
    `histogram_quantile` does: linear within the bucket it falls in (the first bucket from 0);
    in the overflow bucket, inf (longer than the last bound). None when no wait was counted."""
    counts = [sums.get(field, 0) for field in WAIT_FIELDS]
    total = sum(counts)
    if not total:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for bound, count in zip(BUCKETS, counts, strict=False):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen, lower = seen + count, float(bound)
    return float("inf")  # in the overflow bucket: longer than the last bound, by how much is not known


def last_hour(
    client: redis.Redis, keys_of: Callable[[str], QueueKeys], queues: Iterable[str], now: float | None = None
) -> dict[str, LastHour]:
    """The last hour of each queue in `queues` (the 60 minutes ending with the current one)."""
    return {queue: hour_of(series) for queue, series in minutes(client, keys_of, queues, now).items()}


def hour_of(series: Iterable[Mapping[str, int]]) -> LastHour:
    """The `LastHour` figures of a queue's minutes (`minutes`)."""
    sums = summed(series)
    return LastHour(
        succeeded_last_hour=sums["done"],
        failed_last_hour=sums["failed"],
        retried_last_hour=sums["retried"],
        dead_lettered_last_hour=sums["dead"],
        avg_run_seconds_last_hour=sums["run_ms"] / sums["runs"] / 1000 if sums["runs"] else 0.0,
        avg_wait_seconds_last_hour=sums["wait_ms"] / sums["waits"] / 1000 if sums["waits"] else 0.0,
    )
