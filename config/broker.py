"""Broker assembly: the one place that turns settings into a running broker.

Guarantees:
- `install()` validates the settings (a bad one raises `ConfigError` before anything
  connects), builds the broker with the middleware stack in the documented order,
  sets the message encoder, and installs the broker as Dramatiq's global broker.
  It is idempotent within a process.
- Building the broker does not connect to Redis; the first command does.
- This module is the seam: the broker class is chosen here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import Encoder
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

from broker.encoder import encoder_for
from broker.inspection import QueueStats, queue_stats
from middleware import PayloadGuard, Routing

from .routing import DEFAULT_ROUTES, Router
from .settings import Settings, load_settings
from .tiers import Taxonomy, build_taxonomy


@dataclass(frozen=True)
class Runtime:
    """What one process runs with: its settings, tiers, routing and broker."""

    settings: Settings
    taxonomy: Taxonomy
    routing: Routing
    broker: RedisBroker
    encoder: Encoder

    def queue_stats(self) -> dict[str, QueueStats]:
        """Counters of every queue of every tier, read from Redis (see `broker/inspection.py`)."""
        return queue_stats(
            self.broker.client,
            self.settings.namespace,
            self.taxonomy.queues,
            heartbeat_timeout_ms=self.broker.heartbeat_timeout,
        )


_runtime: Runtime | None = None


def build(settings: Settings) -> Runtime:
    taxonomy = build_taxonomy(settings)
    encoder = encoder_for(settings.encoder)
    routing = Routing(router=Router(settings.routes or DEFAULT_ROUTES, taxonomy), taxonomy=taxonomy)
    middleware = [
        # Producer side, in this order for before_enqueue:
        PayloadGuard(max_bytes=settings.max_payload_bytes, encoder=encoder),
        routing,  # binds actors to tiers at declaration; stamps the message priority
        # Consumer side: Dramatiq's own policies, fed by the tier's actor options.
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(),
    ]
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url, namespace=settings.namespace, middleware=middleware
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
