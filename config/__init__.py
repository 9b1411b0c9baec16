"""The service's configuration as code: routes, extra queues, tier overrides, priority hook.

`actors/__init__.py` passes this module to `triage.install(config=...)`. Only the
structure lives here; deploy-specific values (`REDIS_URL`, `TRIAGE_NAMESPACE`, limits,
process counts) come from the environment, and every `TRIAGE_*` variable still
overrides what is declared here (`TRIAGE_ROUTES`, `TRIAGE_QUEUES`,
`TRIAGE_TIERS__<TIER>__<FIELD>`). Names Triage does not know are an error at start.
"""

from __future__ import annotations

# Plain `@dramatiq.actor` actors left on Dramatiq's implicit `default` queue are routed by
# name: ordered glob patterns, the first match wins; an actor no rule matches goes to `default`.
ROUTES: list[tuple[str, str]] = [
    ("erp.orders.*", "critical"),
    ("erp.inventory.*", "critical"),
    ("erp.payments.*", "critical"),
    ("erp.notifications.*", "default"),
    ("erp.reports.*", "background"),
    ("erp.analytics.*", "background"),
]

# Extra named queues and the tier whose policies each inherits. A decorator's `queue=` also
# declares one; listing it here makes it known before any actor module is imported.
QUEUES: dict[str, str] = {
    "email": "default",
    "reports": "background",
}

# Per-tier overrides of the built-in policies, e.g. {"critical": {"max_retries": 3}}.
TIERS: dict[str, dict[str, int | float]] = {}

# Named circuit breakers around outbound dependencies: `with triage.breaker("telegram"):` in an
# actor, or `@default(circuit="telegram")`. Per breaker: failure_threshold (consecutive) or
# failure_rate + window_seconds + min_calls; recovery_timeout (s); half_open_probes; ignore
# (exception classes that do not count, "module.Class"); counts ("module:function").
BREAKERS: dict[str, dict[str, object]] = {
    "telegram": {"failure_threshold": 5, "recovery_timeout": 60, "half_open_probes": 1},
}

# Per-tenant dispatch limits by tier or queue: "*" every tenant's default there, other keys one
# tenant's own (rpm: messages a minute, burst: at once after a quiet spell, max_in_flight).
# TRIAGE_TENANT_RPM_<TIER>, ..._BURST_<TIER>, ..._MAX_IN_FLIGHT_<TIER> override a tier's "*".
# e.g. {"background": {"*": {"rpm": 600, "max_in_flight": 4}, "acme": {"rpm": 6000}}}
TENANT_LIMITS: dict[str, dict[str, dict[str, float]]] = {}

# A function that adjusts message priorities, "package.module:function" (None: no hook).
PRIORITY_HOOK: str | None = None
