"""Queue statistics with their tier: the rows of `triage stats` and `Runtime.queue_stats()`.

Guarantees: three pipelined reads for all the queues, whatever their number of messages: the
counters (`triage.broker.inspection.queue_stats`), the detail (`queue_detail`: depth per
priority, mean queued age, tenants held back) and the last hour (`triage.broker.hourly`,
kept by workers). The field names are a public contract (add, never rename); `tier` comes first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from triage.broker.hourly import LastHour, hour_of, minutes
from triage.broker.inspection import QueueCounters, QueueDetail, queue_detail, queue_stats
from triage.broker.redis_broker import TriageBroker


class QueueStats(QueueCounters, QueueDetail, LastHour):
    """A queue's counters, detail, last hour, and its tier."""

    tier: str


def tiered_stats(
    broker: TriageBroker,
    queue_tiers: Mapping[str, str],
    series: Mapping[str, Sequence[Mapping[str, int]]] | None = None,
) -> dict[str, QueueStats]:
    """The counters of each queue of `queue_tiers` (name -> tier), with its tier, in that order.
    `series`: the queues' last hour already read (`hourly.minutes`), not read again."""
    counters = queue_stats(broker.client, broker.shards, queue_tiers)
    detail = queue_detail(broker.client, broker.shards, queue_tiers)
    if series is None:
        series = minutes(broker.client, broker.keys, queue_tiers)
    return {
        queue: QueueStats(tier=queue_tiers[queue], **counters[queue], **detail[queue], **hour_of(series[queue]))
        for queue in queue_tiers
    }
