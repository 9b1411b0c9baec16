"""Assembly: the one module that knows every other, and turns configuration into a broker.

Guarantees:
- `install()` validates the settings (the service's config, then the environment; a bad
  value raises `ConfigError` before anything connects), builds the tiers, routing, the
  Triage broker and the middleware stack, sets the message encoder, and installs the
  broker as Dramatiq's global broker.
- The broker declares every queue of the taxonomy (the tiers' own, the service's extra
  queues), whether or not an actor lives there: a worker consumes every queue its
  `--queues` names, so a message demoted, retried or sent to a queue with no actor of its
  own runs there, by the actor it names (imported by the worker, living on another queue).
- Once per process: a later `install()` returns the same runtime; one that asks for a
  different config, stack or settings raises, rather than mixing two configurations.
  The tier decorators install with the defaults when nothing was installed before them
  (as `@dramatiq.actor` creates a default broker).
- Nothing connects to Redis at install: the client connects at its first command.
- Importing this module (or any of `triage`) changes nothing: no broker, no connection.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.encoder import Encoder
from dramatiq.middleware import GroupCallbacks, Middleware, Retries
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as RedisResultBackend

from triage.broker.barriers import BarrierBackend
from triage.broker.breaker_state import BreakerSpec, CircuitStore
from triage.broker.encoder import encoder_for
from triage.broker.limits import Limits
from triage.broker.redis_broker import TriageBroker
from triage.broker.shedding import Shedding
from triage.middleware import (
    DEFAULT_STACK,
    ActorLimits,
    CircuitBreakers,
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
from triage.middleware.circuit import Breaker, BreakerBoard
from triage.middleware.placement import PriorityHook
from triage.routing import Router
from triage.settings import ConfigError, Settings, load_settings, shard_counter
from triage.stats import QueueStats, tiered_stats
from triage.tiers import Taxonomy, Tier, build_taxonomy


@dataclass(frozen=True)
class Runtime:
    """What one process runs with: its settings, tiers, routing and broker."""

    settings: Settings
    taxonomy: Taxonomy
    routing: Routing
    broker: TriageBroker
    encoder: Encoder
    breakers: BreakerBoard

    def queue_stats(self) -> dict[str, QueueStats]:
        """Counters of every queue of every tier, read from Redis."""
        return tiered_stats(self.broker, self.taxonomy.queues)


_runtime: Runtime | None = None
_installed_with: tuple[Any, ...] = ()


def load_object(spec: str, variable: str) -> Any:
    """The object `spec` names, "package.module:attribute" or "package.module.attribute", or a
    `ConfigError` that names `variable`."""
    module_name, _, attribute = spec.partition(":") if ":" in spec else spec.rpartition(".")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"invalid configuration:\n  {variable}: cannot load {spec!r}: {exc}") from None
    return found


def load_hook(spec: str | None) -> PriorityHook | None:
    if spec is None:
        return None
    hook = load_object(spec, "TRIAGE_PRIORITY_HOOK")
    if not callable(hook):
        raise ConfigError(f"invalid configuration:\n  TRIAGE_PRIORITY_HOOK: {spec!r} is not callable")
    return hook  # type: ignore[no-any-return]


def build_breakers(settings: Settings, client: redis.Redis) -> BreakerBoard:
    """The declared circuit breakers, their `ignore` classes and `counts` functions loaded."""
    store = CircuitStore(client=client, namespace=settings.namespace)
    breakers = {}
    for name, declared in settings.breakers.items():
        where = f"TRIAGE_BREAKERS__{name.upper()}__"
        ignore = tuple(load_object(path, where + "IGNORE") for path in declared.ignore)
        for path, loaded in zip(declared.ignore, ignore, strict=True):
            if not (isinstance(loaded, type) and issubclass(loaded, BaseException)):
                raise ConfigError(f"invalid configuration:\n  {where}IGNORE: {path!r} is not an exception class")
        counts = load_object(declared.counts, where + "COUNTS") if declared.counts else None
        if counts is not None and not callable(counts):
            raise ConfigError(f"invalid configuration:\n  {where}COUNTS: {declared.counts!r} is not callable")
        spec = BreakerSpec(
            name,
            failure_threshold=declared.failure_threshold,
            failure_rate=declared.failure_rate,
            window_ms=int(declared.window_seconds * 1000),
            min_calls=declared.min_calls,
            recovery_ms=int(declared.recovery_timeout * 1000),
            half_open_probes=declared.half_open_probes,
        )
        breakers[name] = Breaker(spec, store, ignore=ignore, counts=counts)
    return BreakerBoard(store, breakers)


def build(settings: Settings, stack: Iterable[StackEntry] = DEFAULT_STACK) -> Runtime:
    """A runtime for `settings` with the middleware `stack` (classes and instances, in order)."""
    taxonomy = build_taxonomy(settings)
    encoder = encoder_for(settings.encoder)
    client = settings.redis_client()
    routing = Routing(router=Router(settings.routes, taxonomy), taxonomy=taxonomy)
    breakers = build_breakers(settings, client)
    parts = _Parts(settings, taxonomy, routing, encoder, client, breakers)
    middleware = [_policy(entry, parts) for entry in stack]
    if any(isinstance(m, Retries) for m in middleware) and any(isinstance(m, RetryPolicy) for m in middleware):
        raise ConfigError(
            "invalid configuration:\n  middleware: Dramatiq's Retries and Triage's RetryPolicy both retry failed "
            "messages; keep one (RetryPolicy retries atomically and keeps dead letters with a reason)"
        )
    if routing not in middleware:
        raise ConfigError(
            "invalid configuration:\n  middleware: the stack must include Routing (tiers bind through it)"
        )

    def tier_of(queue: str) -> Tier:
        return taxonomy.tier_of_queue(queue) or taxonomy.tiers["default"]

    # Settings and tiers are frozen: each queue's limits are worked out once, not at every send.
    @functools.cache
    def tenant_limits(queue: str) -> tuple[Limits, dict[str, Limits]]:
        tier = tier_of(queue).name
        own = settings.tenant_overrides(queue, tier)
        return settings.tenant_defaults(queue, tier).limits(), {t: limit.limits() for t, limit in own.items()}

    @functools.cache
    def admission_delay_ms(queue: str) -> int:
        defaults = settings.tenant_defaults(queue, tier_of(queue).name)
        return 0 if defaults.admission == "deny" else int(defaults.defer_seconds * 1000)

    shedding = None
    if settings.load_shedding:
        shed_tiers = frozenset(settings.load_shedding_tiers)
        late_after = settings.load_shedding_after_seconds or taxonomy.tiers["critical"].sla_seconds
        shedding = Shedding(
            watched=lambda: taxonomy.queues_of("critical"),
            sheds=lambda queue: tier_of(queue).name in shed_tiers,
            late_after_ms=int(late_after * 1000),
            hold_ms=int(settings.load_shedding_defer_seconds * 1000),
        )

    broker = TriageBroker(
        client=client,
        namespace=settings.namespace,
        middleware=middleware,
        heartbeat_timeout_ms=int(settings.heartbeat_timeout * 1000),
        max_deliveries=lambda queue: tier_of(queue).max_deliveries,
        dead_letter_limits=lambda queue: tier_of(queue).dead_letter_limits(),
        tenant_limits=tenant_limits,
        tenant_idle_ms=int(settings.tenant_idle_seconds * 1000),
        admission_delay_ms=admission_delay_ms,
        shedding=shedding,
        queue_label=lambda queue: taxonomy.queues.get(queue, "default"),
        min_replicas=settings.min_replicas,
        replica_timeout_ms=settings.replica_timeout_ms,
        encoder=encoder,
        shards=shard_counter(settings),
    )
    # Every queue of the taxonomy is declared, not only those an actor lives on: a worker consumes
    # each queue its --queues names, so what is demoted, retried or sent there runs.
    for queue_name in taxonomy.queues:
        broker.declare_queue(queue_name)
    return Runtime(
        settings=settings, taxonomy=taxonomy, routing=routing, broker=broker, encoder=encoder, breakers=breakers
    )


@dataclass(frozen=True)
class _Parts:
    """What the policies are built from."""

    settings: Settings
    taxonomy: Taxonomy
    routing: Routing
    encoder: Encoder
    client: redis.Redis
    breakers: BreakerBoard

    def tier_name(self, queue: str) -> str:
        tier = self.taxonomy.tier_of_queue(queue)
        return tier.name if tier is not None else "default"

    def demote_to(self, queue: str) -> str | None:
        """Where `on_open="background"` moves a message of `queue`: the background tier's queue,
        unless the queue belongs to that tier already."""
        tier = self.taxonomy.tier_of_queue(queue)
        return None if tier is not None and tier.name == "background" else "background"


def _policy(entry: StackEntry, parts: _Parts) -> Middleware:
    """One stack entry as middleware: Triage's policies (and Dramatiq's Redis-backed ones)
    built with this process's settings, other classes without arguments, instances as they are."""
    if isinstance(entry, Middleware):
        return entry
    settings, taxonomy, routing, encoder, client = (
        parts.settings,
        parts.taxonomy,
        parts.routing,
        parts.encoder,
        parts.client,
    )
    factories: dict[type[Middleware], Callable[[], Middleware]] = {
        CircuitBreakers: lambda: CircuitBreakers(board=parts.breakers, demote_to=parts.demote_to),
        ActorLimits: lambda: ActorLimits(client=client, namespace=settings.namespace),
        WorkerMetrics: lambda: WorkerMetrics(
            port=settings.metrics_port,
            host=settings.metrics_host,
            tier_of=parts.tier_name,
            hourly=settings.hourly_stats,
        ),
        Periodic: lambda: Periodic(client=client, namespace=settings.namespace, timezone=settings.periodic_timezone),
        PayloadGuard: lambda: PayloadGuard(max_bytes=settings.max_payload_bytes, encoder=encoder),
        Routing: lambda: routing,
        ProcessTuning: lambda: ProcessTuning(switch_interval_ms=settings.switch_interval_ms),
        Recycling: lambda: Recycling(
            max_messages=settings.max_messages_per_process, max_rss_mb=settings.max_rss_mb_per_process
        ),
        Placement: lambda: Placement(taxonomy=taxonomy, hook=load_hook(settings.priority_hook)),
        Results: lambda: Results(  # type: ignore[no-untyped-call]
            backend=RedisResultBackend(client=client, namespace=f"{settings.namespace}-results", encoder=encoder)
        ),
        GroupCallbacks: lambda: GroupCallbacks(BarrierBackend(client=client)),
    }
    factory = factories.get(entry)
    return factory() if factory is not None else entry()


def install(
    *,
    config: object | Mapping[str, Any] | None = None,
    middleware: Iterable[StackEntry] | None = None,
    settings: Settings | None = None,
) -> Runtime:
    """Build the runtime (once per process) and make its broker Dramatiq's global broker.

    `config`: the service's structure (a module or mapping with `ROUTES`, `QUEUES`, `TIERS`,
    `PRIORITY_HOOK`), which the environment overrides; `middleware`: the stack (default
    `triage.middleware.DEFAULT_STACK`); `settings`: ready settings instead of both sources.
    """
    global _runtime, _installed_with
    stack = tuple(middleware) if middleware is not None else None
    asked = (config, stack, settings)
    if _runtime is not None:
        if any(a is not None for a in asked) and asked != _installed_with:
            raise RuntimeError(
                "Triage is already installed in this process with another configuration: call "
                "triage.install(...) once, before any actor is declared"
            )
        return _runtime
    runtime = build(settings or load_settings(config), stack if stack is not None else DEFAULT_STACK)
    dramatiq.set_encoder(runtime.encoder)
    dramatiq.set_broker(runtime.broker)
    _runtime, _installed_with = runtime, asked
    return runtime


def current() -> Runtime:
    """The installed runtime, installing the defaults if nothing was installed yet."""
    return _runtime if _runtime is not None else install()
