"""Fleet metrics from Redis: what every queue, breaker and worker looks like, for one scrape target.

Guarantees:
- Read at each scrape, from Redis alone (no application code): the queues `triage stats`
  knows, the breakers any process declared, the live workers' registrations. The cost is
  O(number of queues, breakers and workers) — a handful of pipelined round trips — whatever
  the number of messages (depth per priority: O(tenants with queued messages) in Redis).
- Names follow Prometheus conventions: the `triage_` prefix, base units (`_seconds`),
  counters ending in `_total`. Labels are bounded: queue, tier, state, reason, breaker —
  never message arguments, hostnames or pids.
- Counters are Redis's own (they only grow, from a queue's first use); a flush of Redis resets
  them, which Prometheus's `rate()` reads as a counter reset.
- When Redis cannot be reached (refused, timed out) the scrape still answers, with
  `triage_redis_up 0` and nothing else from Redis (so an alert can tell "Redis down" from
  "queue empty"); any other Redis error fails the scrape (Prometheus's `up` is 0: a bug to see).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from triage.broker.breaker_state import CircuitStore
from triage.broker.inspection import AGE_SAMPLE
from triage.stats import QueueStats

logger = logging.getLogger(__name__)

# Counters of `triage stats`, exported as triage_queue_<name> (the name ends in _total).
QUEUE_COUNTERS = {
    "enqueued_total": "Messages stored in the queue (retries excluded).",
    "acked_total": "Messages acknowledged (done).",
    "retries_total": "Failed runs retried.",
    "deferred_total": "Messages deferred (an open breaker, an actor limit): no retry used.",
    "moved_total": "Messages moved to another queue (an open breaker's background policy).",
    "duplicates_total": "Sends refused as duplicates of a message holding their dedup key.",
    "shed_total": "New messages delayed by load shedding.",
    "admission_denied_total": "Sends refused by tenant admission (max_pending).",
    "admission_deferred_total": "Sends delayed by tenant admission (max_pending).",
    "requeued_total": "Dead letters requeued by operators.",
    "purged_total": "Dead letters purged by operators.",
    "dead_letters_trimmed_total": "Dead letters dropped by retention.",
}
# The last hour (per-minute buckets kept by workers), exported as gauges: triage_queue_<name>.
LAST_HOUR = {
    "succeeded_last_hour": "Runs that succeeded in the last hour.",
    "failed_last_hour": "Runs that failed for good in the last hour (dead-lettered, or failed with no retry).",
    "retried_last_hour": "Runs retried in the last hour.",
    "dead_lettered_last_hour": "Runs dead-lettered in the last hour.",
    "avg_run_seconds_last_hour": "Mean run time over the last hour.",
    "avg_wait_seconds_last_hour": "Mean wait (from due to start) over the last hour.",
}
STATES = ("queued", "delayed", "retrying", "running")
BREAKER_STATES = ("closed", "open", "half_open")
BREAKER_COUNTERS = {
    "rejected_total": "Calls refused while the breaker was open.",
    "opened_total": "Times the breaker opened.",
    "failures_total": "Failures the breaker counted.",
}


class FleetCollector(Collector):
    """A prometheus-client collector over Redis.

    Parameters:
      stats: every known queue's stats with its tier (`Admin.stats`).
      sla_seconds: a tier's queue-wait target.
      live_workers: per queue, the live worker processes consuming it.
      breakers: the breakers' store.
      periodic: per periodic actor, when its last success ended.
    """

    def __init__(
        self,
        *,
        stats: Callable[[], dict[str, QueueStats]],
        sla_seconds: Callable[[str], float],
        live_workers: Callable[[], dict[str, int]],
        breakers: CircuitStore,
        periodic: Callable[[], dict[str, float]] = dict,
    ) -> None:
        self.stats, self.sla_seconds, self.live_workers, self.breakers = stats, sla_seconds, live_workers, breakers
        self.periodic = periodic

    def describe(self) -> list[Metric]:
        return []  # collected at each scrape only (nothing is read from Redis at registration)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("triage_redis_up", "1 if the last scrape could read Redis, else 0.")
        try:
            families = list(self._families())
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            logger.warning("Fleet metrics not read from Redis (%s).", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        stats = self.stats()
        workers = self.live_workers()
        labels = ["queue", "tier"]
        messages = GaugeMetricFamily(
            "triage_queue_messages", "Messages of the queue by state (each counted once).", labels=[*labels, "state"]
        )
        oldest = GaugeMetricFamily(
            "triage_queue_oldest_waiting_seconds",
            "How long the oldest message a worker could take now has waited (0: none).",
            labels=labels,
        )
        sla = GaugeMetricFamily("triage_queue_sla_seconds", "The queue's tier's queue-wait target.", labels=labels)
        paused = GaugeMetricFamily("triage_queue_paused", "1 while the queue is paused.", labels=labels)
        dead = GaugeMetricFamily("triage_queue_dead_letters", "Dead letters kept for the queue now.", labels=labels)
        live = GaugeMetricFamily(
            "triage_queue_workers", "Live worker processes consuming the queue (heartbeats).", labels=labels
        )
        by_priority = GaugeMetricFamily(
            "triage_queue_messages_by_priority", "Queued messages by priority level.", labels=[*labels, "priority"]
        )
        age = GaugeMetricFamily(
            "triage_queue_avg_age_seconds",
            f"Mean age of the queued messages (sampled past {AGE_SAMPLE}).",
            labels=labels,
        )
        held = GaugeMetricFamily("triage_queue_tenants_held_back", "Tenants parked by their limits now.", labels=labels)
        hour = {
            name: GaugeMetricFamily(f"triage_queue_{name}", text, labels=labels) for name, text in LAST_HOUR.items()
        }
        counters = {
            name: CounterMetricFamily(f"triage_queue_{name.removesuffix('_total')}", text, labels=labels)
            for name, text in QUEUE_COUNTERS.items()
        }
        dead_by_reason = CounterMetricFamily(
            "triage_queue_dead_lettered", "Messages dead-lettered, by reason.", labels=[*labels, "reason"]
        )
        for queue, row in stats.items():
            values = [queue, row["tier"]]
            for state in STATES:
                messages.add_metric([*values, state], row[state])  # type: ignore[literal-required]
            oldest.add_metric(values, row["oldest_waiting_seconds"])
            sla.add_metric(values, self.sla_seconds(row["tier"]))
            paused.add_metric(values, int(row["paused"]))
            dead.add_metric(values, row["dead_letters_total"])
            live.add_metric(values, workers.get(queue, 0))
            for level, n in row["queued_by_priority"].items():
                by_priority.add_metric([*values, level], n)
            age.add_metric(values, row["avg_queue_age_seconds"])
            held.add_metric(values, row["tenants_held_back"])
            for name, gauge in hour.items():
                gauge.add_metric(values, row[name])  # type: ignore[literal-required]
            for name, family in counters.items():
                family.add_metric(values, row[name])  # type: ignore[literal-required]
            for reason, count in row["dead_letters_by_reason"].items():
                dead_by_reason.add_metric([*values, reason], count)
        yield from (messages, by_priority, oldest, age, sla, paused, dead, live, held)
        yield from (*counters.values(), dead_by_reason, *hour.values())
        yield from self._breakers()
        success = GaugeMetricFamily(
            "triage_periodic_last_success_timestamp_seconds",
            "When a periodic actor's last successful run ended (unix time).",
            labels=["actor"],
        )
        for actor, at in sorted(self.periodic().items()):
            success.add_metric([actor], at)
        yield success

    def _breakers(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "triage_breaker_state", "1 for the breaker's current state, 0 for the others.", labels=["breaker", "state"]
        )
        counters = {
            name: CounterMetricFamily(f"triage_breaker_{name.removesuffix('_total')}", text, labels=["breaker"])
            for name, text in BREAKER_COUNTERS.items()
        }
        for name, row in self.breakers.status(self.breakers.names()).items():
            for candidate in BREAKER_STATES:
                state.add_metric([name, candidate], int(row["state"] == candidate))
            for field, family in counters.items():
                family.add_metric([name], row[field])
        yield state
        yield from counters.values()
