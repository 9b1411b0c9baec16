"""A view of the queues in Redis, for `triage stats`, load shedding and the admin surface.

Guarantees:
- One round trip (MULTI/EXEC: one consistent snapshot) for every queue, no
  `KEYS`/`SCAN`.
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
from typing import TypedDict

import redis

from .clock import now_ms
from .keys import LEVELS, QueueKeys
from .scripts import load


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
    client: redis.Redis, keys_of: Callable[[str], QueueKeys], queues: Iterable[str]
) -> dict[str, QueueDetail]:
    """Each queue's depth per priority, mean queued age and tenants held back, in the order given."""
    names = list(queues)
    detail = load(client, "detail")
    pipe = client.pipeline(transaction=False)
    for queue in names:
        keys = keys_of(queue)
        detail(keys=[keys.items, keys.state, keys.since, keys.parked], args=[AGE_SAMPLE], client=pipe)
    found: dict[str, QueueDetail] = {}
    for queue, reply in zip(names, pipe.execute(), strict=True):
        *levels, sampled, age_ms, held = (int(value) for value in reply)
        found[queue] = QueueDetail(
            queued_by_priority={str(level): n for level, n in zip(LEVELS, levels, strict=True)},
            avg_queue_age_seconds=round(age_ms / sampled / 1000, 3) if sampled else 0.0,
            tenants_held_back=held,
        )
    return found


def queue_stats(
    client: redis.Redis, keys_of: Callable[[str], QueueKeys], queues: Iterable[str]
) -> dict[str, QueueCounters]:
    """Counters of each queue in `queues`, in the order given."""
    names = list(queues)
    pipe = client.pipeline(transaction=True)  # one snapshot: delayed - retrying is never negative
    oldest = load(client, "oldest")
    for queue in names:
        keys = keys_of(queue)
        pipe.hlen(keys.items)
        pipe.zcard(keys.delayed)
        pipe.zcard(keys.retrying)
        pipe.hgetall(keys.stats)
        pipe.zcard(keys.dead)
        pipe.exists(keys.paused)
        oldest(keys=[keys.state, keys.heads, keys.delayed], args=[now_ms()], client=pipe)
    replies = iter(pipe.execute())
    stats: dict[str, QueueCounters] = {}
    for queue in names:
        queued, delayed, retrying, raw, dead, paused, waited_ms = (next(replies) for _ in range(7))
        counters = {k.decode(): int(v) for k, v in raw.items()}
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
            oldest_waiting_seconds=int(waited_ms) / 1000,
            dead_letters_by_reason={k[5:]: v for k, v in sorted(counters.items()) if k.startswith("dead:")},
            dead_letters_trimmed_total=counters.get("dead_trimmed_total", 0),
            requeued_total=counters.get("requeued_total", 0),
            purged_total=counters.get("purged_total", 0),
        )
    return stats
