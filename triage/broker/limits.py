"""Per-tenant dispatch limits of a queue: their form, and what operators read of them.

The limits themselves are applied by the broker's scripts (`lua/_tenants.lua`): a tenant over
its rate (a token bucket: `rpm` per minute, `burst` deep) or its in-flight cap is parked out of
the round-robin, its messages left in place, until it may be served again.

Idle tenants are forgotten: a tenant's bookkeeping (`{ns:Q}:tenants` fields: its bucket, its
throttled, refused and deferred counts) is removed once it has been idle (nothing pending, nothing
in flight) for `TENANT_IDLE_MS` (an hour; `TriageBroker(tenant_idle_ms=...)`), so a million
tenants seen once do not stay in Redis for ever. The fields are those of one per-queue hash, and
Redis 7.0 cannot expire a hash field: a per-queue sorted set (`{ns:Q}:tenants.idle`, under the
queue's hash tag, so every script still touches one cluster slot; one per shard) holds, for each
tenant with such fields, since when it is idle, and each fetch forgets at most
`TENANT_SWEEP_PER_FETCH` of those idle for longer. A fetch was chosen over a heartbeat sweep or
the operators' view because it alone knows the limits (a bucket is forgotten only once it is full
again) and runs on every worker, idle ones included, about once a second (with no worker
fetching, nothing is forgotten until one does). A tenant is forgotten one idle time after its
last pending message settled or it was last refused or deferred (one more idle time if its bucket
had not refilled by then), never while something of it is pending or in flight, never while its
bucket refills: a tenant that comes back starts with zero counts and a full bucket, which is what
it would have found. What `tenant_view` shows of a forgotten tenant (its counters) starts again
from zero.
Cost: one ZRANGEBYSCORE per fetch, one ZADD XX when a tenant's last pending message settles, one
ZADD when a bucket or throttle count is first written and at every refusal or deferral; a sweep is
at most seven calls over at most `TENANT_SWEEP_PER_FETCH` tenants (`bench/tenants.py` measures it).

Guarantees: `tenant_view` reads a queue's bookkeeping in one transaction (a consistent
snapshot); it is O(fields of the queue's tenant state), for operators, never on a hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import redis

from .errors import Backpressure
from .keys import QueueKeys
from .outcome import ENQUEUE_FIELDS
from .text import as_text

Limits = tuple[float, float, int, int]  # a tenant's rpm, burst, max in flight, max pending (0: no limit)
NO_LIMITS: Limits = (0, 0, 0, 0)
SLOT_PARKED = 10**15  # lua/_tenants.lua's SLOT_PARKED: parked until one of its messages settles
TENANT_IDLE_MS = 3_600_000  # a tenant idle this long is forgotten (TriageBroker's tenant_idle_ms)
TENANT_SWEEP_PER_FETCH = 20  # a fetch forgets at most this many idle tenants (lua/_tenants.lua)
ADMISSION_RETRY_AFTER_S = 5.0  # a refused tenant without a rate limit is told to come back after this


def limits_text(limits: Limits) -> str:
    """Limits as `lua/_tenants.lua` reads them: "rpm|burst|max_in_flight|max_pending"."""
    rpm, burst, max_in_flight, max_pending = limits
    return f"{_decimal(rpm)}|{_decimal(burst)}|{int(max_in_flight)}|{int(max_pending)}"


def _decimal(value: float) -> str:
    """A number in plain decimals (never `1e+06`)."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def parse_limits(text: str) -> Limits:
    rpm, burst, max_in_flight, max_pending = text.split("|")
    return float(rpm), float(burst), int(max_in_flight), int(max_pending)


def write_limits(client: redis.Redis, key: str, defaults: Limits, own: dict[str, Limits], *, replace: bool) -> None:
    """Write a queue's limits where the scripts read them: tenants' own, and "*" the defaults (for
    operators). `replace` (a worker) drops what an earlier configuration wrote; otherwise (a
    producer) fields are only added, never erasing what the workers wrote."""
    fields = {tenant: limits_text(limits) for tenant, limits in own.items()}
    if any(defaults):
        fields["*"] = limits_text(defaults)
    pipe = client.pipeline(transaction=True)
    if replace:
        pipe.delete(key)
    if fields:
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
    pipe.execute()


def refusal(
    reply: list[Any],
    queue: str,
    fields: list[Any],
    tenant_limits: Callable[[str], tuple[Limits, dict[str, Limits]]],
) -> Backpressure:
    """The `Backpressure` for the enqueue script's refusal `{tenant, queue position, pending, cap}`
    of a tenant on `queue`; `fields` are the script's message fields for that queue (shard)
    (ENQUEUE_FIELDS each, the tenant fourth)."""
    tenant, pending, cap = as_text(reply[0]), int(reply[2]), int(reply[3])
    defaults, own = tenant_limits(queue)
    rpm = own.get(tenant, defaults)[0]
    adding = sum(1 for i in range(3, len(fields), ENQUEUE_FIELDS) if fields[i] == tenant)
    # At the tenant's rate, the time for the excess to drain; without a rate, a few seconds.
    retry_after = max(1.0, (pending + adding - cap) * 60 / rpm) if rpm else ADMISSION_RETRY_AFTER_S
    return Backpressure(tenant, queue, pending, cap, retry_after)


class TenantRow(TypedDict):
    queued: int
    in_flight: int
    pending: int  # queued, delayed or in flight: what admission counts
    throttled_total: int
    admission_denied_total: int
    admission_deferred_total: int
    parked: str  # "" (not held back), "slot" (until a message of its settles) or "rate"
    eligible_in_seconds: float | None  # rate-parked: when it may be served again
    rpm: float
    burst: float
    max_in_flight: int
    max_pending: int
    own_limits: bool


def tenant_view(client: redis.Redis, keys: QueueKeys, now_ms: int) -> dict[str, TenantRow]:
    """Every tenant with messages queued, in flight or throttled on the queue, with its limits."""
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.state)
    pipe.hgetall(keys.tenants)
    pipe.zrange(keys.parked, 0, -1, withscores=True)
    pipe.hgetall(keys.limits)
    state, tenants, parked, limits = pipe.execute()
    text = {as_text(k): as_text(v) for k, v in limits.items()}
    defaults = parse_limits(text["*"]) if "*" in text else NO_LIMITS
    rows: dict[str, TenantRow] = {}

    def row(tenant: str) -> TenantRow:
        if tenant not in rows:
            own = text.get(tenant)
            rpm, burst, max_in_flight, max_pending = parse_limits(own) if own else defaults
            rows[tenant] = TenantRow(
                queued=0,
                in_flight=0,
                pending=0,
                throttled_total=0,
                admission_denied_total=0,
                admission_deferred_total=0,
                parked="",
                eligible_in_seconds=None,
                rpm=rpm,
                burst=burst,
                max_in_flight=max_in_flight,
                max_pending=max_pending,
                own_limits=own is not None,
            )
        return rows[tenant]

    for field, value in state.items():
        name = as_text(field)
        if name.startswith("n|"):
            tenant = name.split("|", 2)[2]
            if tenant:
                row(tenant)["queued"] += int(value)
    for field, value in tenants.items():
        kind, _, tenant = as_text(field).partition("|")
        if kind == "f":
            row(tenant)["in_flight"] = int(value)
        elif kind == "x":
            row(tenant)["throttled_total"] = int(value)
        elif kind == "p":
            row(tenant)["pending"] = int(value)
        elif kind == "d":
            row(tenant)["admission_denied_total"] = int(value)
        elif kind == "a":
            row(tenant)["admission_deferred_total"] = int(value)
    for member, score in parked:
        tenant = as_text(member).partition("|")[2]
        entry = row(tenant)
        if score >= SLOT_PARKED:
            entry["parked"] = "slot"
        elif not entry["parked"]:
            entry["parked"] = "rate"
            entry["eligible_in_seconds"] = max(0.0, (score - now_ms) / 1000)
    return dict(sorted(rows.items(), key=lambda item: (-item[1]["queued"], item[0])))
