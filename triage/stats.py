"""Queue statistics with their tier: the rows of `triage stats` and `Runtime.queue_stats()`.

Guarantees: one pipelined read for all the queues (`triage.broker.inspection`); the
field names are a public contract (add, never rename); `tier` comes first.
"""

from __future__ import annotations

from collections.abc import Mapping

from triage.broker.inspection import QueueCounters, queue_stats
from triage.broker.redis_broker import TriageBroker


class QueueStats(QueueCounters):
    """A queue's counters and its tier."""

    tier: str


def tiered_stats(broker: TriageBroker, queue_tiers: Mapping[str, str]) -> dict[str, QueueStats]:
    """The counters of each queue of `queue_tiers` (name -> tier), with its tier, in that order."""
    counters = queue_stats(broker.client, broker.keys, queue_tiers)
    return {queue: QueueStats(tier=queue_tiers[queue], **counters[queue]) for queue in queue_tiers}
