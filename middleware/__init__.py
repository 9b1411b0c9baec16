"""The service's middleware stack: which policies run, in what order.

`actors/__init__.py` passes `STACK` to `triage.install(middleware=...)`. Triage's policies
are listed as classes and configured from the settings; add your own middleware as an
instance (or a class that takes no arguments) where it belongs in the order. Routing is
required: the tier decorators bind actors through it.
"""

from __future__ import annotations

from dramatiq.middleware import (
    AgeLimit,
    CurrentMessage,
    GroupCallbacks,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results import Results

from triage.middleware import (
    ActorLimits,
    Callbacks,
    CircuitBreakers,
    Deduplication,
    GracefulShutdown,
    Heartbeats,
    PayloadGuard,
    Periodic,
    Placement,
    ProcessTuning,
    Recycling,
    RetryPolicy,
    Routing,
    StackEntry,
    WorkerMetrics,
)

STACK: list[StackEntry] = [
    WorkerMetrics,  # first, so its after-hooks see how each message was settled; TRIAGE_METRICS_PORT turns it on
    # Producer side, in this order for `before_enqueue`:
    PayloadGuard,  # plain data, bounded size: nothing else reaches Redis
    Routing,  # actors to tiers at declaration
    Placement,  # priority (1-10) and tenant of every message
    # Worker side:
    Heartbeats,  # liveness: register, heartbeat, reap dead workers
    GracefulShutdown,  # one SIGTERM is one request; unstarted work goes back at once
    ProcessTuning,  # TRIAGE_SWITCH_INTERVAL_MS: the worker processes' thread switch interval
    Recycling,  # TRIAGE_MAX_MESSAGES_PER_PROCESS / TRIAGE_MAX_RSS_MB_PER_PROCESS: a fresh process past either
    CurrentMessage,  # the running message, for priority and tenant inheritance
    AgeLimit,
    TimeLimit,  # the tier's time limit
    ShutdownNotifications,
    Callbacks,  # on_success / on_failure (a deferral is not a failure)
    Pipelines,
    ActorLimits,  # rate_limit="600/m", concurrency=2: fleet-wide, deferred (no retry) when at the limit
    RetryPolicy,  # the tier's retry policy and dead letters with a reason
    CircuitBreakers,  # circuit="name": an open breaker defers (or demotes) the message, no retry used
    Periodic,  # periodic="0 3 * * *" (run by `periodiq actors`): one message per tick however many schedulers
    Deduplication,  # dedup="report:{org_id}", dedup_ttl=3600: one message per key, atomic with the enqueue
    Results,  # opt-in: store_results=True
    GroupCallbacks,  # group(...).run() with a completion callback
]
