"""The tier taxonomy: what `critical`, `default` and `background` promise.

Guarantees:
- Exactly three built-in tiers. Each fixes a default message priority (1-10, 10 most
  urgent), a queue-wait SLA target, a retry policy, a time limit and Dramatiq's
  worker-side actor priority (lower runs first, so critical work prefetched next to
  bulk work starts first).
- Every queue belongs to exactly one tier and inherits its policies. The tiers are
  queues of their own name; extra queues (`email`, `reports`, `gpu.generation`)
  come from the service's `config.QUEUES` or `TRIAGE_QUEUES`, or are added by a
  decorator's `queue=` option.
- Per-tier overrides (`config.TIERS`, overridden field by field by
  `TRIAGE_TIERS__<TIER>__<FIELD>`) are applied once, when the taxonomy is built; a min
  backoff above the max backoff is a configuration error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from .settings import TIER_NAMES, BackoffKind, ConfigError, Settings, TierName

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tier:
    name: TierName
    priority: int  # default message priority, 1-10, 10 most urgent
    sla_seconds: float  # queue-wait target
    max_retries: int
    min_backoff_ms: int
    max_backoff_ms: int
    time_limit_ms: int
    actor_priority: int  # Dramatiq's worker-side order: lower runs first
    max_deliveries: int = 3  # deliveries that killed their worker before a message is quarantined
    backoff: BackoffKind = "exponential"  # linear: min_backoff_ms is the step
    backoff_factor: float = 2.0  # exponential: each retry's ceiling is this times the last one
    retry_queue: str | None = None  # retries go to this queue (after retry_queue_after attempts)
    retry_queue_after: int = 0
    dead_letters_max: int = 100_000  # per queue; the oldest beyond it are dropped (and counted)
    dead_letters_max_age_days: float = 90.0

    def actor_options(self) -> dict[str, object]:
        """The actor options this tier implies (the retry policy and Dramatiq's TimeLimit read them)."""
        options: dict[str, object] = {
            "max_retries": self.max_retries,
            "min_backoff": self.min_backoff_ms,
            "max_backoff": self.max_backoff_ms,
            "backoff": self.backoff,
            "backoff_factor": self.backoff_factor,
            "time_limit": self.time_limit_ms,
        }
        if self.retry_queue is not None:
            options["retry_queue"] = self.retry_queue
            options["retry_queue_after"] = self.retry_queue_after
        return options

    def dead_letter_limits(self) -> tuple[int, int]:
        """(max entries, max age in ms) of each queue's dead letters."""
        return self.dead_letters_max, int(self.dead_letters_max_age_days * 86_400_000)


BUILTIN_TIERS: dict[TierName, Tier] = {
    "critical": Tier(
        name="critical",
        priority=9,
        sla_seconds=2.0,
        max_retries=5,
        min_backoff_ms=200,
        max_backoff_ms=10_000,
        time_limit_ms=30_000,
        actor_priority=0,
    ),
    "default": Tier(
        name="default",
        priority=5,
        sla_seconds=10.0,
        max_retries=10,
        min_backoff_ms=1_000,
        max_backoff_ms=300_000,
        time_limit_ms=300_000,
        actor_priority=50,
    ),
    "background": Tier(
        name="background",
        priority=2,
        sla_seconds=300.0,
        max_retries=10,
        min_backoff_ms=15_000,
        max_backoff_ms=3_600_000,
        time_limit_ms=3_600_000,
        actor_priority=100,
    ),
}


@dataclass
class Taxonomy:
    """The tiers in effect and the queue → tier map of this process."""

    tiers: dict[TierName, Tier]
    queues: dict[str, TierName] = field(default_factory=dict)

    def tier_of_queue(self, queue_name: str) -> Tier | None:
        name = self.queues.get(queue_name)
        return self.tiers[name] if name else None

    def tier_named(self, name: object) -> Tier | None:
        """The tier called `name` (an actor's `tier` option), or None."""
        return next((tier for tier in self.tiers.values() if tier.name == name), None)

    def add_queue(self, queue_name: str, tier: TierName) -> None:
        """Bind a queue to a tier; binding a queue to a second tier is an error."""
        current = self.queues.get(queue_name)
        if current is not None and current != tier:
            raise ValueError(f"queue {queue_name!r} belongs to tier {current!r}, not {tier!r}")
        if current is None:
            logger.debug("Queue %r joins tier %r.", queue_name, tier)
            self.queues[queue_name] = tier

    def queues_of(self, tier: TierName) -> list[str]:
        """The tier's own queue first, then its extra queues in name order."""
        extra = sorted(q for q, t in self.queues.items() if t == tier and q != tier)
        return [tier, *extra]


def build_taxonomy(settings: Settings) -> Taxonomy:
    tiers: dict[TierName, Tier] = {}
    for name in TIER_NAMES:
        override = settings.tiers.get(name)
        tier = BUILTIN_TIERS[name]
        if override is not None:
            changes = {k: v for k, v in override.model_dump().items() if v is not None}
            tier = replace(tier, **changes)
        if tier.min_backoff_ms > tier.max_backoff_ms:
            raise ConfigError(
                f"invalid configuration:\n  TRIAGE_TIERS__{name.upper()}__MIN_BACKOFF_MS: "
                f"{tier.min_backoff_ms} is above the max backoff {tier.max_backoff_ms}"
            )
        tiers[name] = tier
    queues: dict[str, TierName] = {name: name for name in TIER_NAMES}
    for queue_name, tier_name in settings.queue_tiers().items():
        if queue_name in TIER_NAMES and queue_name != tier_name:
            raise ConfigError(
                f"invalid configuration:\n  TRIAGE_QUEUES: {queue_name!r} is a tier and cannot join {tier_name!r}"
            )
        queues[queue_name] = tier_name
    for name, tier in tiers.items():
        if tier.retry_queue is not None and tier.retry_queue not in queues:
            raise ConfigError(
                f"invalid configuration:\n  TRIAGE_TIERS__{name.upper()}__RETRY_QUEUE: {tier.retry_queue!r} is "
                f"neither a tier nor a declared queue ({', '.join(queues)}), so no worker consumes it; declare it "
                f"in TRIAGE_QUEUES (or config.QUEUES) with its tier, and run a worker with --queues {tier.retry_queue}"
            )
    return Taxonomy(tiers=tiers, queues=queues)


def sla_targets(settings: Settings) -> dict[str, float]:
    """Each tier's queue-wait target, overrides applied."""
    return {name: tier.sla_seconds for name, tier in build_taxonomy(settings).tiers.items()}
