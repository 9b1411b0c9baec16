"""Queue statistics with their tier: the rows of `triage stats` and `Runtime.queue_stats()`.

Guarantees: three pipelined reads for all the queues, whatever their number of messages: the
counters (`triage.broker.inspection.queue_stats`), the detail (`queue_detail`: depth per
priority, mean queued age, tenants held back) and the last hour (`triage.broker.hourly`,
kept by workers). The field names are a public contract (add, never rename); `tier` comes first.
"""

from __future__ import annotations

from collections.abc import Mapping

from triage.broker.hourly import LastHour, last_hour
from triage.broker.inspection import QueueCounters, QueueDetail, queue_detail, queue_stats
from triage.broker.redis_broker import TriageBroker


class QueueStats(QueueCounters, QueueDetail, LastHour):
    """A queue's counters, detail, last hour, and its tier."""

    tier: str


def tiered_stats(broker: TriageBroker, queue_tiers: Mapping[str, str]) -> dict[str, QueueStats]:
    """The counters of each queue of `queue_tiers` (name -> tier), with its tier, in that order."""
    counters = queue_stats(broker.client, broker.keys, queue_tiers)
    detail = queue_detail(broker.client, broker.keys, queue_tiers)
    hour = last_hour(broker.client, broker.keys, queue_tiers)
    return {
        queue: QueueStats(tier=queue_tiers[queue], **counters[queue], **detail[queue], **hour[queue])
        for queue in queue_tiers
    }
