"""Broker assembly: the one place that turns settings into a running broker.

Guarantees:
- `install()` validates the settings (a bad one raises `ConfigError` before anything
  connects), builds the Triage broker with the middleware stack in the documented
  order, sets the message encoder, and installs the broker as Dramatiq's global broker.
  It is idempotent within a process.
- Building the broker loads its Lua scripts lazily: nothing connects to Redis until the
  first command.
- This module is the seam: the broker class is chosen here and nowhere else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import dramatiq
from dramatiq.encoder import Encoder
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    GroupCallbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as RedisResultBackend

from broker.connection import client_from_url
from broker.encoder import encoder_for
from broker.inspection import QueueStats, queue_stats
from broker.liveness import Liveness
from broker.redis_broker import TriageBroker
from middleware import PayloadGuard, Placement, Routing
from middleware.placement import PriorityHook

from .routing import DEFAULT_ROUTES, Router
from .settings import ConfigError, Settings, load_settings
from .tiers import Taxonomy, build_taxonomy


@dataclass(frozen=True)
class Runtime:
    """What one process runs with: its settings, tiers, routing and broker."""

    settings: Settings
    taxonomy: Taxonomy
    routing: Routing
    broker: TriageBroker
    encoder: Encoder

    def queue_stats(self) -> dict[str, QueueStats]:
        """Counters of every queue of every tier, read from Redis (see `broker/inspection.py`)."""
        return queue_stats(self.broker, self.taxonomy.queues)


_runtime: Runtime | None = None


def load_hook(spec: str | None) -> PriorityHook | None:
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"invalid configuration:\n  TRIAGE_PRIORITY_HOOK: cannot load {spec!r}: {exc}") from None
    if not callable(hook):
        raise ConfigError(f"invalid configuration:\n  TRIAGE_PRIORITY_HOOK: {spec!r} is not callable")
    return hook  # type: ignore[no-any-return]


def build(settings: Settings) -> Runtime:
    taxonomy = build_taxonomy(settings)
    encoder = encoder_for(settings.encoder)
    routing = Routing(router=Router(settings.routes or DEFAULT_ROUTES, taxonomy), taxonomy=taxonomy)
    client = client_from_url(settings.redis_url)
    middleware = [
        # Producer side, in this order for before_enqueue:
        PayloadGuard(max_bytes=settings.max_payload_bytes, encoder=encoder),  # plain data, bounded size
        routing,  # binds actors to tiers at declaration
        Placement(taxonomy=taxonomy, hook=load_hook(settings.priority_hook)),  # priority and tenant
        # Consumer side: heartbeats and the reaper; the current message (for inheritance);
        # then Dramatiq's own policies, fed by the tier's actor options.
        Liveness(),
        CurrentMessage(),
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(),
        # Opt-in per actor or message (`store_results=True`, `group(...).run()` with a callback).
        Results(  # type: ignore[no-untyped-call]
            backend=RedisResultBackend(client=client, namespace=f"{settings.namespace}-results", encoder=encoder)
        ),
        GroupCallbacks(RedisRateLimiterBackend(client=client)),
    ]
    broker = TriageBroker(
        client=client,
        namespace=settings.namespace,
        middleware=middleware,
        heartbeat_timeout_ms=int(settings.heartbeat_timeout * 1000),
        max_deliveries=lambda queue: (taxonomy.tier_of_queue(queue) or taxonomy.tiers["default"]).max_deliveries,
        min_replicas=settings.min_replicas,
        replica_timeout_ms=settings.replica_timeout_ms,
        encoder=encoder,
    )
    return Runtime(settings=settings, taxonomy=taxonomy, routing=routing, broker=broker, encoder=encoder)


def install(settings: Settings | None = None) -> Runtime:
    """Build the runtime from the environment (once) and make its broker Dramatiq's global broker."""
    global _runtime
    if _runtime is None:
        runtime = build(settings or load_settings())
        dramatiq.set_encoder(runtime.encoder)
        dramatiq.set_broker(runtime.broker)
        _runtime = runtime
    return _runtime


def current() -> Runtime:
    """The installed runtime; `import actors` installs it."""
    if _runtime is None:
        raise RuntimeError("Triage is not installed in this process: `import actors` first")
    return _runtime
