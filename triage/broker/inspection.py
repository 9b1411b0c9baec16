"""A read-only view of the queues in Redis, for `triage stats` and the admin surface.

Guarantees:
- Reads only; one pipelined round trip for every queue, no `KEYS`/`SCAN`.
- Field names are a public contract (`queued`, `delayed`, `running`,
  `dead_letters_total`, `paused`): fields may be added, never renamed.
- `queued` counts messages waiting in the queue, `delayed` those waiting for their eta,
  `running` those fetched by a worker and not settled yet (prefetched ones included),
  `dead_letters_total` those in the queue's dead letters.
- Counters only: which tier a queue belongs to is for the caller to add.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypedDict

import redis

from .keys import QueueKeys


class QueueCounters(TypedDict):
    queued: int
    delayed: int
    running: int
    dead_letters_total: int
    paused: bool
    enqueued_total: int
    acked_total: int


def queue_stats(
    client: redis.Redis, keys_of: Callable[[str], QueueKeys], queues: Iterable[str]
) -> dict[str, QueueCounters]:
    """Counters of each queue in `queues`, in the order given."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        keys = keys_of(queue)
        pipe.hlen(keys.items)
        pipe.zcard(keys.delayed)
        pipe.hmget(keys.stats, ["running", "enqueued_total", "acked_total"])
        pipe.zcard(keys.dead)
        pipe.exists(keys.paused)
    replies = iter(pipe.execute())
    stats: dict[str, QueueCounters] = {}
    for queue in names:
        queued, delayed, counters, dead, paused = (next(replies) for _ in range(5))
        running, enqueued, acked = (int(c or 0) for c in counters)
        stats[queue] = QueueCounters(
            queued=queued,
            delayed=delayed,
            running=running,
            dead_letters_total=dead,
            paused=bool(paused),
            enqueued_total=enqueued,
            acked_total=acked,
        )
    return stats
