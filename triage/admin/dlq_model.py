"""The shapes of the dead-letter operations: which entries (`Filter`), one entry
(`DeadLetter`), a group of the summary (`Group`), what an action did (`ActionResult`), and
the parsing of the CLI's durations and rates.

Guarantees: an entry is built from the JSON record the broker keeps (`_dead.lua`); a field
the record lacks gets a neutral value (empty string, 0, None), never an exception.
An empty filter value is never a filter of "entries without it": a form's blank field is a
filter not given (`filter_from`); the API and the CLI refuse an empty value outright. A rate
is a finite number of messages per second, above 0 and at most MAX_RATE.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from triage.broker.clock import now_ms


@dataclass(frozen=True)
class Filter:
    """Which dead letters: every field that is set must match (since_ms: dead-lettered at or after)."""

    queue: str | None = None
    actor: str | None = None
    tenant: str | None = None
    error: str | None = None
    reason: str | None = None
    since_ms: int | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in asdict(self).values())

    def matches(self, entry: DeadLetter) -> bool:
        return (
            (self.actor is None or entry.actor == self.actor)
            and (self.tenant is None or entry.tenant == self.tenant)
            and (self.error is None or entry.error_type == self.error)
            and (self.reason is None or entry.reason == self.reason)
            and (self.since_ms is None or entry.dead_lettered_at_ms >= self.since_ms)
        )

    def index(self) -> tuple[bytes, bytes]:
        """The index dimension to read and its value: the first filter set among actor, error,
        tenant, reason (else every entry)."""
        for dim, value in (("a", self.actor), ("e", self.error), ("t", self.tenant), ("r", self.reason)):
            if value is not None:
                return dim.encode(), value.encode()
        return b"*", b""


EVERYTHING = Filter()
# What a filter's values may be, wherever they come from (the CLI, the API, the dashboard).
NAME = r"^[A-Za-z0-9_.:-]{1,200}$"  # a queue, breaker or entry id
DURATION = r"^\d{1,7}(\.\d{1,3})?[smhd]$"  # 30s, 15m, 1h, 7d
MAX_VALUE = 200
MAX_RATE = 100_000  # per second: a requeue's fastest pace


def filter_from(values: Mapping[str, str | None], *, now: int | None = None) -> Filter:
    """The filter of text values (a form, a query string): empty ones are not filters; `since`
    is a duration before `now`, `since_ms` an instant (it wins). A value that cannot be one is
    a ValueError that names it."""
    given = {name: (values.get(name) or "").strip() or None for name in ("queue", "actor", "tenant", "error", "reason")}
    for name, value in given.items():
        if value is not None and (len(value) > MAX_VALUE or (name == "queue" and not re.fullmatch(NAME, value))):
            raise ValueError(f"{name}: {value[:40]!r} is not a {name} name")
    instant = (values.get("since_ms") or "").strip()
    duration = (values.get("since") or "").strip()
    if instant:
        if not instant.isdigit() or len(instant) > 15:
            raise ValueError(f"since_ms: {instant[:40]!r} is not a time in epoch milliseconds")
        since_ms: int | None = int(instant)
    elif duration:
        if not re.fullmatch(DURATION, duration):
            raise ValueError(f"since: {duration[:40]!r} is not a duration like 30s, 15m, 1h or 7d")
        since_ms = since(duration, now=now)
    else:
        since_ms = None
    return Filter(**given, since_ms=since_ms)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    queue: str
    tier: str
    reason: str
    actor: str
    tenant: str
    priority: int | None
    message_id: str
    attempts: int
    deliveries: int
    error_type: str
    error_message: str
    traceback: str
    first_failure_ms: int
    dead_lettered_at_ms: int
    message: dict[str, Any] | None = field(default=None, compare=False)  # show(): the decoded message
    shard: int = 0  # of a sharded queue: which shard holds it (`TriageBroker.shards`)

    @property
    def cursor(self) -> str:
        return f"{self.dead_lettered_at_ms:013d}-{self.id}"

    def as_dict(self, *, traceback: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not traceback:
            data.pop("traceback")
        if self.message is None:
            data.pop("message")
        if not self.shard:
            data.pop("shard")
        return data


@dataclass(frozen=True)
class Group:
    queue: str
    actor: str
    error_type: str
    reason: str
    count: int
    first_ms: int
    last_ms: int


@dataclass
class ActionResult:
    """What a requeue or purge did: `done` entries acted on, `gone` taken by someone else
    first, `skipped` that cannot be requeued (undecodable)."""

    matched: int = 0
    done: int = 0
    gone: int = 0
    skipped: list[str] = field(default_factory=list)


def record_from(queue: str, tier: str, redis_id: str, raw: bytes) -> DeadLetter:
    info: dict[str, Any] = json.loads(raw)
    error = info.get("error") or {}
    priority = info.get("priority")
    return DeadLetter(
        id=redis_id,
        queue=queue,
        tier=tier,
        reason=str(info.get("reason", "")),
        actor=str(info.get("actor", "")),
        tenant=str(info.get("tenant", "")),
        priority=int(priority) if isinstance(priority, int | float) else None,
        message_id=str(info.get("message_id", "")),
        attempts=int(info.get("attempts", 1)),
        deliveries=int(info.get("deliveries", 0)),
        error_type=str(error.get("type", "")),
        error_message=str(error.get("message", "")),
        traceback=str(error.get("traceback", "")),
        first_failure_ms=int(info.get("first_failure_ms") or info.get("dead_lettered_at_ms", 0)),
        dead_lettered_at_ms=int(info.get("dead_lettered_at_ms", 0)),
    )


def since(duration: str, *, now: int | None = None) -> int:
    """`30s`, `15m`, `1h`, `7d` before now, in epoch ms."""
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    number, unit = duration[:-1], duration[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit() or len(number) > 12:
        raise ValueError(f"{duration[:40]!r} is not a duration like 30s, 15m, 1h or 7d")
    return (now if now is not None else now_ms()) - int(float(number) * units[unit])


def rate(value: str) -> float:
    """`50/s`, `600/m`, `3000/h` or `50` (per second) -> messages per second: a finite number
    above 0, at most MAX_RATE per second (else ValueError; `nan`, `inf`, `1e400` are not rates)."""
    number, _, unit = value.partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        count = float(number)
    except ValueError:
        count = -1.0
    if unit not in per or not math.isfinite(count) or count <= 0:
        raise ValueError(f"{value[:40]!r} is not a rate like 50/s, 600/m or 3000/h")
    if count / per[unit] > MAX_RATE:
        raise ValueError(f"{value[:40]!r} is over {MAX_RATE:,} per second")
    return count / per[unit]
