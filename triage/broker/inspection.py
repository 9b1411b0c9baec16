"""A view of the queues in Redis, for `triage stats`, load shedding and the admin surface.

Guarantees:
- One round trip (MULTI/EXEC: one consistent snapshot) for every queue, no
  `KEYS`/`SCAN`. On a Redis Cluster, one transaction per queue shard (each a snapshot of its
  slot), on the node that serves it (`slots.grouped`).
- A sharded queue is one row: its shards' counts summed, its oldest wait the oldest of any.
- Field names are a public contract (`queued`, `delayed`, `retrying`, `running`,
  `dead_letters_total`, `paused`, ...): fields may be added, never renamed.
- A queue's messages are counted once each: `queued` (waiting in the queue), `delayed`
  (waiting for their eta), `retrying` (waiting for their retry backoff), `running`
  (fetched by a worker and not settled yet, prefetched ones included), and
  `dead_letters_total` (in the dead letters now).
- `oldest_waiting_seconds`: how long the oldest message that a consumer could take now has
  waited (0.0 when there is none), by Redis's clock (`lua/oldest.lua`): queued ones, and
  delayed ones whose eta has passed but that no fetch has moved yet (every worker busy);
  messages not yet due and those of tenants held back by their limits are not waiting for a
  worker and do not count.
- Reads only, but for two repairs: the per-level counters (above), and a stale `heads` entry
  (an empty FIFO, left by a worker of an earlier version) is dropped when met.
- The `*_total` fields and `dead_letters_by_reason` are counters since the queue's first
  use (they only grow): enqueued, acked, retries, deferrals, dead letters by reason, dead
  letters dropped by retention (`dead_letters_trimmed_total`), requeued and purged by operators.
- Counters only: which tier a queue belongs to is for the caller to add.
- `queue_detail` (`lua/detail.lua`, one pipelined round trip) adds, per queue: `queued_by_priority`
  (priority level -> queued messages, every level present), `avg_queue_age_seconds` (the mean
  age of the queued messages since they became ready: exact up to `AGE_SAMPLE` of them, else
  estimated from that many sampled at random) and `tenants_held_back` (tenants parked by their
  limits now). Its cost grows with the parked tenants, not with the messages or the tenants
  (per-level counters kept by the FIFO scripts; recounted once if an earlier version left them short).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypedDict

import redis

from .clock import now_ms
from .keys import LEVELS, QueueKeys
from .scripts import load
from .slots import grouped


class QueueCounters(TypedDict):
    queued: int
    delayed: int
    retrying: int
    running: int
    dead_letters_total: int
    paused: bool
    enqueued_total: int
    acked_total: int
    retries_total: int
    deferred_total: int
    moved_total: int
    admission_denied_total: int
    admission_deferred_total: int
    shed_total: int
    duplicates_total: int
    oldest_waiting_seconds: float
    dead_letters_by_reason: dict[str, int]
    dead_letters_trimmed_total: int
    requeued_total: int
    purged_total: int


class QueueDetail(TypedDict):
    queued_by_priority: dict[str, int]
    avg_queue_age_seconds: float
    tenants_held_back: int


AGE_SAMPLE = 200


def queue_detail(
    client: redis.Redis, shards_of: Callable[[str], list[QueueKeys]], queues: Iterable[str]
) -> dict[str, QueueDetail]:
    """Each queue's depth per priority, mean queued age and tenants held back, in the order given."""
    names = list(queues)
    detail = load(client, "detail")

    def commands(keys: QueueKeys) -> Callable[[Any], None]:
        return lambda pipe: detail(
            keys=[keys.items, keys.state, keys.since, keys.parked], args=[AGE_SAMPLE], client=pipe
        )

    replies = grouped(client, {keys.tag: (keys.tag, commands(keys)) for q in names for keys in shards_of(q)})
    found: dict[str, QueueDetail] = {}
    for queue in names:
        levels, sampled, age_ms, held = [0] * len(LEVELS), 0, 0, 0
        for keys in shards_of(queue):
            *counts, shard_sampled, shard_age, shard_held = (int(value) for value in replies[keys.tag][0])
            levels = [a + b for a, b in zip(levels, counts, strict=True)]
            sampled, age_ms, held = sampled + shard_sampled, age_ms + shard_age, held + shard_held
        found[queue] = QueueDetail(
            queued_by_priority={str(level): n for level, n in zip(LEVELS, levels, strict=True)},
            avg_queue_age_seconds=round(age_ms / sampled / 1000, 3) if sampled else 0.0,
            tenants_held_back=held,
        )
    return found


def queue_stats(
    client: redis.Redis, shards_of: Callable[[str], list[QueueKeys]], queues: Iterable[str]
) -> dict[str, QueueCounters]:
    """Counters of each queue in `queues`, in the order given."""
    names = list(queues)
    oldest = load(client, "oldest")

    def commands(keys: QueueKeys) -> Callable[[Any], None]:
        def queue_commands(pipe: Any) -> None:
            pipe.hlen(keys.items)
            pipe.zcard(keys.delayed)
            pipe.zcard(keys.retrying)
            pipe.hgetall(keys.stats)
            pipe.zcard(keys.dead)
            pipe.exists(keys.paused)
            oldest(keys=[keys.state, keys.heads, keys.delayed], args=[now_ms()], client=pipe)

        return queue_commands

    # One snapshot per shard: delayed - retrying is never negative.
    groups = {keys.tag: (keys.tag, commands(keys)) for q in names for keys in shards_of(q)}
    replies = grouped(client, groups, transaction=True)
    stats: dict[str, QueueCounters] = {}
    for queue in names:
        queued = delayed = retrying = dead = paused = waited_ms = 0
        counters: dict[str, int] = {}
        for keys in shards_of(queue):
            shard = replies[keys.tag]
            queued, delayed, retrying = queued + shard[0], delayed + shard[1], retrying + shard[2]
            for k, v in shard[3].items():
                counters[k.decode()] = counters.get(k.decode(), 0) + int(v)
            dead, paused, waited_ms = dead + shard[4], paused or shard[5], max(waited_ms, int(shard[6]))
        stats[queue] = QueueCounters(
            queued=queued,
            delayed=delayed - retrying,
            retrying=retrying,
            running=counters.get("running", 0),
            dead_letters_total=dead,
            paused=bool(paused),
            enqueued_total=counters.get("enqueued_total", 0),
            acked_total=counters.get("acked_total", 0),
            retries_total=counters.get("retries_total", 0),
            deferred_total=counters.get("deferred_total", 0),
            moved_total=counters.get("moved_total", 0),
            admission_denied_total=counters.get("admission_denied_total", 0),
            admission_deferred_total=counters.get("admission_deferred_total", 0),
            shed_total=counters.get("shed_total", 0),
            duplicates_total=counters.get("duplicates_total", 0),
            oldest_waiting_seconds=waited_ms / 1000,
            dead_letters_by_reason={k[5:]: v for k, v in sorted(counters.items()) if k.startswith("dead:")},
            dead_letters_trimmed_total=counters.get("dead_trimmed_total", 0),
            requeued_total=counters.get("requeued_total", 0),
            purged_total=counters.get("purged_total", 0),
        )
    return stats
