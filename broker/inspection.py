"""A read-only view of the queues in Redis, for `triage stats` and the admin surface.

Guarantees:
- Reads only; one pipelined round trip for every queue, no `KEYS`/`SCAN`.
- Field names are a public contract (`queued`, `delayed`, `running`,
  `dead_letters_total`, `paused`): fields may be added, never renamed.
- Reads the key layout of Dramatiq's `RedisBroker`, the broker `config/broker.py`
  installs today: `ns:Q` (list of queued ids), `ns:Q.DQ` (delayed), `ns:Q.XQ` (dead
  letters), `ns:__acks__.<worker>.<Q>` (fetched, not acked) and `ns:__heartbeats__`.
  `running` counts the messages that live workers have fetched and not acked yet,
  prefetched ones included; `delayed` counts delayed messages in Redis plus those a
  worker holds in memory until they are due. That broker has no pause, so `paused` is
  always false with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypedDict

import redis


class QueueStats(TypedDict):
    tier: str
    queued: int
    delayed: int
    running: int
    dead_letters_total: int
    paused: bool


def queue_stats(
    client: redis.Redis, namespace: str, queues: Mapping[str, str], *, heartbeat_timeout_ms: int
) -> dict[str, QueueStats]:
    """Per-queue counters for `queues` (name → tier), in the order given."""
    now_ms = int(time.time() * 1000)
    workers: list[Any] = client.zrangebyscore(
        f"{namespace}:__heartbeats__", now_ms - heartbeat_timeout_ms, "+inf"
    )
    worker_ids = [w.decode() if isinstance(w, bytes) else str(w) for w in workers]
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        base = f"{namespace}:{queue}"
        pipe.llen(base)
        pipe.llen(f"{base}.DQ")
        pipe.zcard(f"{base}.XQ")
        for worker in worker_ids:
            pipe.scard(f"{namespace}:__acks__.{worker}.{queue}")
            pipe.scard(f"{namespace}:__acks__.{worker}.{queue}.DQ")
    replies = iter(pipe.execute())
    stats: dict[str, QueueStats] = {}
    for queue, tier in queues.items():
        queued, delayed, dead = next(replies), next(replies), next(replies)
        running = 0
        for _ in worker_ids:
            running += next(replies)
            delayed += next(replies)
        stats[queue] = QueueStats(
            tier=tier, queued=queued, delayed=delayed, running=running, dead_letters_total=dead, paused=False
        )
    return stats
