"""The last hour of each queue, from per-minute buckets in Redis that workers write in batches.

Guarantees:
- A worker process adds what it ran to `{ns:Q}:minute:<unix minute>` hashes (fields
  `FIELDS`) in one pipelined round trip per flush (about once a second), whatever the number
  of messages: no extra round trip per message. Each bucket expires `KEEP_SECONDS` after its
  minute began, so Redis holds about 62 buckets per queue and nothing needs pruning.
- `last_hour` sums the 60 buckets that end with the current minute, in one round trip for all
  the queues: succeeded, failed (every run that raised: retried, dead-lettered or failed),
  retried, dead-lettered, and the mean run time and wait (send to first start) of those runs.
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

FIELDS = ("done", "failed", "retried", "dead", "runs", "run_ms", "waits", "wait_ms")
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


def last_hour(
    client: redis.Redis, keys_of: Callable[[str], QueueKeys], queues: Iterable[str], now: float | None = None
) -> dict[str, LastHour]:
    """The last hour of each queue in `queues` (the 60 minutes ending with the current one)."""
    names = list(queues)
    end = current_minute(now)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        keys = keys_of(queue)
        for minute in range(end - MINUTES + 1, end + 1):
            pipe.hmget(keys.minute(minute), FIELDS)
    replies = iter(pipe.execute())
    figures: dict[str, LastHour] = {}
    for queue in names:
        sums = dict.fromkeys(FIELDS, 0)
        for _ in range(MINUTES):
            for field, value in zip(FIELDS, next(replies), strict=True):
                sums[field] += int(value or 0)
        figures[queue] = LastHour(
            succeeded_last_hour=sums["done"],
            failed_last_hour=sums["failed"],
            retried_last_hour=sums["retried"],
            dead_lettered_last_hour=sums["dead"],
            avg_run_seconds_last_hour=sums["run_ms"] / sums["runs"] / 1000 if sums["runs"] else 0.0,
            avg_wait_seconds_last_hour=sums["wait_ms"] / sums["waits"] / 1000 if sums["waits"] else 0.0,
        )
    return figures
