"""What the dashboard's screens show, read from Redis at request time (nothing cached).

Guarantees:
- The overview is one card per queue (tiers first), from the same reads as `triage stats`
  (counters, detail, the last hour) plus the per-minute buckets of the last hour and the live
  workers: depth, delayed, running, oldest waiting, wait p95 over the last 5 minutes (estimated
  from the bucket counts the way Prometheus's `histogram_quantile` does), throughput and
  failures per minute, and a status against the tier's SLA:
    red    the oldest waiting message, or the p95 wait, is over the SLA;
    amber  either is over half of it, or work is waiting and no live worker serves the queue;
    green  otherwise.
- Every figure comes from the broker's bookkeeping; a queue with no history shows zeros.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from triage.broker.clock import now_ms
from triage.broker.hourly import minutes, summed, wait_quantile
from triage.stats import QueueStats, tiered_stats

from ..ops import Admin
from ..tenants import tenant_listing

P95_MINUTES = 5


@dataclass(frozen=True)
class Card:
    queue: str
    tier: str
    stats: QueueStats
    sla_seconds: float
    wait_p95_seconds: float | None
    done_per_minute: list[int]
    failed_per_minute: list[int]
    live_workers: int
    status: str  # green, amber, red

    @property
    def status_text(self) -> str:
        return {"green": "meeting its SLA", "amber": "at risk", "red": "missing its SLA"}[self.status]


def status_of(oldest: float, p95: float | None, sla: float, waiting: int, workers: int) -> str:
    worst = max(oldest, p95 or 0.0)
    if worst > sla:
        return "red"
    if worst > sla / 2 or (waiting and not workers):
        return "amber"
    return "green"


def overview_cards(admin: Admin, sla: Mapping[str, float]) -> list[Card]:
    """One card per known queue, tiers first."""
    queues = admin.queues()
    series = minutes(admin.broker.client, admin.broker.keys, queues)  # the charts' minutes, and the stats' hour
    stats = tiered_stats(admin.broker, queues, series)
    workers = admin.broker.registry.live_workers()
    cards = []
    for queue, row in stats.items():
        target = sla.get(row["tier"], sla["default"])
        p95 = wait_quantile(summed(series[queue][-P95_MINUTES:]), 0.95)
        live = workers.get(queue, 0)
        cards.append(
            Card(
                queue=queue,
                tier=row["tier"],
                stats=row,
                sla_seconds=target,
                wait_p95_seconds=p95,
                done_per_minute=[minute["done"] for minute in series[queue]],
                failed_per_minute=[minute["failed"] for minute in series[queue]],
                live_workers=live,
                status=status_of(row["oldest_waiting_seconds"], p95, target, row["queued"], live),
            )
        )
    return cards


def live_workers(admin: Admin) -> list[dict[str, Any]]:
    """The live worker processes, with their start time and last heartbeat as datetimes."""
    rows = admin.broker.registry.worker_details()
    for row in rows:
        row["since"] = when(row.get("started_ms"))
        row["beat_age_seconds"] = max(0.0, (now_ms() - row["last_beat_ms"]) / 1000)
    return rows


def top_tenants(admin: Admin, top: int = 20) -> dict[str, dict[str, Any]]:
    """Per queue with tenants, its top tenants by backlog (as `triage tenants`)."""
    return tenant_listing(admin, None, top)


def when(ms: int | None) -> str:
    """Epoch ms as a UTC time ('-' for none)."""
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    """A duration for people: 840 ms, 12.5 s, 3.2 min, 1.5 h; '-' for none, '> 1 h' past the buckets."""
    if value is None:
        return "-"
    if value == float("inf"):
        return "> 1 h"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"
