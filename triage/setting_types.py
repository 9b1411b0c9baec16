"""The settings' value types: tier names, and the models of one queue, tier override, circuit
breaker and tenant limit, each validated by pydantic as part of `triage.settings.Settings`.

Guarantees: each model refuses unknown fields (a typo is an error, not a silent default) and is
frozen; bounds are checked at load, so a process never starts on an out-of-range value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from triage.broker.priority import MAX_PRIORITY, MIN_PRIORITY

TierName = Literal["critical", "default", "background"]
BackoffKind = Literal["exponential", "linear"]
TIER_NAMES: tuple[TierName, ...] = ("critical", "default", "background")
MIB = 1024 * 1024


Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)]
PositiveMs = Annotated[int, Field(gt=0)]


MAX_SHARDS = 64


class QueueSetting(BaseModel):
    """A queue's tier, and how many shards spread its messages (`TRIAGE_QUEUES`' object form)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: TierName
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS)


class TierOverride(BaseModel):
    """Per-tier overrides of the built-in policies; unset fields keep the tier's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority | None = None
    sla_seconds: Annotated[float, Field(gt=0)] | None = None
    max_retries: Annotated[int, Field(ge=0)] | None = None
    min_backoff_ms: PositiveMs | None = None
    max_backoff_ms: PositiveMs | None = None
    time_limit_ms: PositiveMs | None = None
    max_deliveries: Annotated[int, Field(ge=1, le=100)] | None = None
    backoff: BackoffKind | None = None
    backoff_factor: Annotated[float, Field(ge=1, le=100)] | None = None
    retry_queue: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9._-]*$")] | None = None
    retry_queue_after: Annotated[int, Field(ge=0)] | None = None
    dead_letters_max: Annotated[int, Field(ge=0)] | None = None
    dead_letters_max_age_days: Annotated[float, Field(ge=0)] | None = None


BREAKER_NAME = r"^[a-z][a-z0-9_.-]{0,63}$"
_IMPORT_PATH = r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$"


class BreakerSettings(BaseModel):
    """One named circuit breaker: when it trips, how it recovers, which failures count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Consecutive failures that open it (the default mode)...
    failure_threshold: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    # ...or, when set, the failure rate (0-1] over the last window_seconds, once min_calls calls were made.
    failure_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    min_calls: Annotated[int, Field(ge=1)] = 10
    # Seconds open before probing; also how long a probe may take before another is admitted.
    recovery_timeout: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    half_open_probes: Annotated[int, Field(ge=1, le=1000)] = 1
    # Exceptions that do not count as failures ("module.Class"): the dependency answered (HTTP 4xx).
    ignore: list[Annotated[str, Field(pattern=_IMPORT_PATH)]] = Field(default_factory=list)
    # A function of the exception that says whether it counts ("module:function"), after `ignore`.
    counts: Annotated[str, Field(pattern=_IMPORT_PATH)] | None = None


class TenantLimit(BaseModel):
    """A tenant's dispatch limits on one queue (0: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: Annotated[float, Field(ge=0, le=6_000_000)] = 0  # messages per minute, a token bucket...
    burst: Annotated[float, Field(ge=0, le=1_000_000)] = 0  # ...this deep (0: one second's worth, at least 1)
    max_in_flight: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # fetched and not settled, at once
    # Admission at send: at most this many pending (queued, delayed, in flight); over it, the
    # queue's `admission` policy: "deny" (Backpressure) or "defer" (sent with defer_seconds' delay).
    max_pending: Annotated[int, Field(ge=0, le=1_000_000_000)] = 0
    admission: Literal["deny", "defer"] = "deny"
    defer_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0

    @model_validator(mode="after")
    def _check_burst(self) -> TenantLimit:
        if 0 < self.burst < 1:
            raise ValueError(f"burst must be 0 (one second's worth) or at least 1, got {self.burst}")
        return self

    def limits(self) -> tuple[float, float, int, int]:
        """(rpm, burst, max_in_flight, max_pending) as the broker takes them."""
        burst = self.burst or (max(1.0, self.rpm / 60) if self.rpm else 0.0)
        return self.rpm, burst, self.max_in_flight, self.max_pending
