"""A read-only view of the queues in Redis, for `triage stats` and the admin surface.

Guarantees:
- Reads only; one pipelined round trip for every queue, no `KEYS`/`SCAN`.
- Field names are a public contract (`queued`, `delayed`, `running`,
  `dead_letters_total`, `paused`): fields may be added, never renamed.
- `queued` counts messages waiting in the queue, `delayed` those waiting for their eta,
  `running` those fetched by a worker and not settled yet (prefetched ones included),
  `dead_letters_total` those in the queue's dead letters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from .redis_broker import TriageBroker


class QueueStats(TypedDict):
    tier: str
    queued: int
    delayed: int
    running: int
    dead_letters_total: int
    paused: bool
    enqueued_total: int
    acked_total: int


def queue_stats(broker: TriageBroker, queues: Mapping[str, str]) -> dict[str, QueueStats]:
    """Per-queue counters for `queues` (name → tier), in the order given."""
    pipe = broker.client.pipeline(transaction=False)
    for queue in queues:
        keys = broker.keys(queue)
        pipe.hlen(keys.items)
        pipe.zcard(keys.delayed)
        pipe.hmget(keys.stats, ["running", "enqueued_total", "acked_total"])
        pipe.zcard(keys.dead)
        pipe.exists(keys.paused)
    replies = iter(pipe.execute())
    stats: dict[str, QueueStats] = {}
    for queue, tier in queues.items():
        queued, delayed, counters, dead, paused = (next(replies) for _ in range(5))
        running, enqueued, acked = (int(c or 0) for c in counters)
        stats[queue] = QueueStats(
            tier=tier,
            queued=queued,
            delayed=delayed,
            running=running,
            dead_letters_total=dead,
            paused=bool(paused),
            enqueued_total=enqueued,
            acked_total=acked,
        )
    return stats
