"""Actor limits: a fleet-wide rate limit and concurrency limit per actor, deferring, never retrying.

    @default(rate_limit="600/m")            # at most 600 runs a minute across every worker
    @background(concurrency=2)              # at most 2 running at once across every worker

Guarantees: before a message of a limited actor runs, one Lua call (`lua/actor_limits.lua`,
keys `{ns:actor:NAME}:*`, a hash tag of their own) takes a token from the actor's bucket
(`rate_limit` "N/s", "N/m" or "N/h"; `rate_burst` tokens at most, 1 by default: evenly
spaced runs) and a lease (`concurrency`). Refused, the message is deferred (`RateLimited`, a
`triage.Defer`) by the time until the next token (or, for concurrency, until the earliest
lease may end, at most a second): its retries are not used and it is not fetched before then.
A lease lasts the message's or actor's `time_limit` (10 minutes without one) plus a minute:
a worker that dies holding one frees its place when it expires. When Redis cannot be reached
(or refuses the call: read-only, out of memory) the message is deferred too (and, the
deferral unwritable, stays in flight until Redis answers), never run unlimited. Unlike
Dramatiq's `ConcurrentRateLimiter`, nothing raises into the actor and no retry is burned;
unlike Celery's `rate_limit`, the limit holds across processes.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import redis
from dramatiq import Actor, Broker, Middleware
from dramatiq.middleware import MiddlewareError

from triage.broker.clock import now_ms
from triage.broker.errors import CONNECTION_ERRORS
from triage.broker.scripts import load

from .declaration import InvalidActorOption
from .retries import Defer

logger = logging.getLogger(__name__)

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIOD_MS = {"s": 1000, "sec": 1000, "second": 1000, "m": 60_000, "min": 60_000, "minute": 60_000}
_PERIOD_MS |= {"h": 3_600_000, "hour": 3_600_000}
DEFAULT_LEASE_MS = 10 * 60_000
LEASE_MARGIN_MS = 60_000
UNREACHABLE_WAIT_MS = 1000
_LEASE = "_triage_lease"


class RateLimited(Defer, MiddlewareError):
    """An actor's rate or concurrency limit held a message back for `retry_after` seconds."""

    def __init__(self, actor: str, wait_ms: int) -> None:
        super().__init__(wait_ms, f"actor {actor!r} is at its limit; again in {wait_ms / 1000:.2f} s")
        self.actor = actor
        self.retry_after = wait_ms / 1000


def parse_rate(text: str) -> float:
    """'600/m' as runs per millisecond."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate_limit must look like '10/s', '600/m' or '1000/h', got {text!r}")
    return float(match.group(1)) / _PERIOD_MS[match.group(2)]


class ActorLimits(Middleware):
    """The `rate_limit`, `rate_burst` and `concurrency` actor options, fleet-wide.

    Parameters:
      client: the Redis client.
      namespace: the key prefix.
    """

    def __init__(self, *, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.script = load(client, "actor_limits")
        self._limits: dict[str, tuple[float, float, int, int]] = {}  # actor -> rate/ms, burst, concurrency, lease

    @property
    def actor_options(self) -> set[str]:
        return {"rate_limit", "rate_burst", "concurrency"}

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        options = actor.options
        if not any(options.get(name) for name in ("rate_limit", "concurrency")):
            return
        where = f"actor {actor.actor_name!r}"
        try:
            rate = parse_rate(str(options["rate_limit"])) if options.get("rate_limit") else 0.0
        except ValueError as exc:
            raise InvalidActorOption(f"{where}: {exc}") from None
        burst, concurrency = options.get("rate_burst", 1), options.get("concurrency", 0)
        if not isinstance(burst, int | float) or burst < 1:
            raise InvalidActorOption(f"{where}: rate_burst must be a number >= 1, got {burst!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0:
            raise InvalidActorOption(f"{where}: concurrency must be a whole number >= 0, got {concurrency!r}")
        lease = int(options.get("time_limit") or DEFAULT_LEASE_MS) + LEASE_MARGIN_MS
        self._limits[actor.actor_name] = (rate, float(burst), concurrency, lease)

    def _keys(self, actor: str) -> list[str]:
        tag = f"{{{self.namespace}:actor:{actor}}}"
        return [f"{tag}:bucket", f"{tag}:leases"]

    def before_process_message(self, broker: Broker, message: Any) -> None:
        limits = self._limits.get(message.actor_name)
        if limits is None:
            return
        rate, burst, concurrency, lease_ms = limits
        if message.options.get("time_limit"):  # a message's own time limit: the lease lasts as long
            lease_ms = max(lease_ms, int(message.options["time_limit"]) + LEASE_MARGIN_MS)
        lease = f"{os.getpid()}:{message.message_id}:{os.urandom(4).hex()}"
        args: list[str | int | float] = ["take", now_ms(), rate, burst, concurrency, lease, lease_ms]
        try:
            wait = int(self.script(keys=self._keys(message.actor_name), args=args))
        except redis.RedisError as exc:  # unreachable, read-only after a failover, out of memory, ...
            logger.warning("Limits of %s not checked (%s): deferred.", message, type(exc).__name__)
            raise RateLimited(message.actor_name, UNREACHABLE_WAIT_MS) from None
        if wait > 0:
            raise RateLimited(message.actor_name, wait)
        if concurrency:
            message.__dict__[_LEASE] = lease

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._release(message)

    def after_skip_message(self, broker: Broker, message: Any) -> None:
        self._release(message)

    def _release(self, message: Any) -> None:
        lease = message.__dict__.pop(_LEASE, None)
        if lease is None:
            return
        try:
            self.script(keys=self._keys(message.actor_name), args=["release", lease])
        except CONNECTION_ERRORS:  # the lease expires by itself
            logger.warning("Lease of %s not released (Redis unreachable); it expires by itself.", message)
