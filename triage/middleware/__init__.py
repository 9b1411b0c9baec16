"""Triage's policies, one per module, and the default stack they form.

A stack is a list of middleware classes and instances, in order. `triage.runtime` builds
each of Triage's policies listed as a class with the process's settings (so a service
lists *which* policies run and in *what order*, not their configuration); any other
class is built without arguments, and an instance is used as it is.
"""

from __future__ import annotations

from dramatiq.middleware import (
    AgeLimit,
    CurrentMessage,
    GroupCallbacks,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results import Results

from triage.broker.priority import InvalidPriority

from .actor_limits import ActorLimits, RateLimited
from .breakers import CircuitBreakers
from .callbacks import Callbacks
from .circuit import CircuitOpen, UnknownBreaker
from .declaration import InvalidActorOption
from .dedup import DedupKeyError, Deduplication
from .heartbeat import Heartbeats
from .metrics import WorkerMetrics
from .payload_guard import PayloadGuard, PayloadTooLarge, PayloadTypeError
from .periodic import Periodic
from .placement import InvalidTenant, Placement
from .recycling import Recycling
from .retries import Defer, RetryPolicy
from .routing import Routing, RoutingError
from .shutdown import GracefulShutdown
from .tuning import ProcessTuning

StackEntry = type[Middleware] | Middleware

DEFAULT_STACK: tuple[StackEntry, ...] = (
    WorkerMetrics,  # first: its after-hooks run last and see how each message was settled (off: port 0)
    # Producer side, in this order for before_enqueue:
    PayloadGuard,  # plain data, bounded size
    Routing,  # binds actors to tiers at declaration (required: the tier decorators use it)
    Placement,  # priority and tenant
    # Worker side: liveness first, then Dramatiq's own policies, fed by the tiers' actor options.
    Heartbeats,
    GracefulShutdown,
    ProcessTuning,  # TRIAGE_SWITCH_INTERVAL_MS (none: Python's 5 ms)
    Recycling,  # TRIAGE_MAX_MESSAGES_PER_PROCESS / TRIAGE_MAX_RSS_MB_PER_PROCESS (off: neither set)
    CurrentMessage,  # the running message, for priority and tenant inheritance
    AgeLimit,
    TimeLimit,
    ShutdownNotifications,
    Callbacks,
    Pipelines,
    ActorLimits,  # rate_limit= / concurrency=: fleet-wide, deferring (before the breaker's gate)
    RetryPolicy,
    CircuitBreakers,  # `circuit=`: after RetryPolicy, so it settles first (its after hook runs first)
    Periodic,  # periodic="*/5 * * * *": one message per tick (a dedup key per tick), stale ticks skipped
    Deduplication,  # dedup keys at send; an until_start key is released once nothing above held the message back
    # Opt-in per actor or message (`store_results=True`, `group(...).run()` with a callback).
    Results,
    GroupCallbacks,
)

__all__ = [
    "DEFAULT_STACK",
    "ActorLimits",
    "Callbacks",
    "CircuitBreakers",
    "CircuitOpen",
    "DedupKeyError",
    "Deduplication",
    "Defer",
    "GracefulShutdown",
    "Heartbeats",
    "InvalidActorOption",
    "InvalidPriority",
    "InvalidTenant",
    "PayloadGuard",
    "PayloadTooLarge",
    "PayloadTypeError",
    "Periodic",
    "Placement",
    "ProcessTuning",
    "RateLimited",
    "Recycling",
    "RetryPolicy",
    "Routing",
    "RoutingError",
    "StackEntry",
    "UnknownBreaker",
    "WorkerMetrics",
]
