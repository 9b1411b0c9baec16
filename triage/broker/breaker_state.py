"""Circuit breaker state in Redis, one state per breaker for the whole fleet.

The life of a breaker, in plain words: it is closed, and calls pass; their failures are
counted (consecutive failures, or the failure rate over a sliding window with a minimum
number of calls). When the count trips, it opens: every call is refused at once with the
time until the next probe. At that time it becomes half-open and admits exactly
`half_open_probes` calls, across every thread of every process; when they all succeed it
closes, when one fails it opens again for another `recovery_ms`. A probe that never
reports (its worker died) is presumed lost after `recovery_ms` and another is admitted.

Guarantees:
- A breaker is one hash in Redis (`{ns:breaker:NAME}`, a hash tag of its own) moved only by
  `lua/breaker.lua`, so every transition is atomic and counted; the result of a call admitted
  before a transition is ignored (each transition bumps a generation).
- A closed breaker costs no round trip per call: each process keeps the closed state it last
  read, for at most `CACHE_TTL_S` and only while its subscription to transitions is live
  (every transition publishes the breaker's name; the cache drops it when that arrives). A
  failure is written at once; a success is written when failures were counted (to reset
  them) or, in the rate mode, with the next round trip (within `CACHE_TTL_S`). An open or
  half-open breaker is asked in Redis on every call, so refusals and probes are exact.
- When Redis cannot be reached, calls are admitted (fail open: a Redis outage does not stop
  outbound calls) and their results are not counted; logged once per outage.

Names are recorded in `{ns}:breakers`, so operators list breakers from Redis alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis

from .clock import now_ms
from .errors import CONNECTION_ERRORS
from .scripts import load
from .text import as_text

logger = logging.getLogger(__name__)

CACHE_TTL_S = 1.0  # a closed state read from Redis is trusted this long, at most
HALF_OPEN_WAIT_MS = 1000  # a call refused while probes run asks again after this, at most
RECONNECT_S = 0.5  # the listener's pause between two subscription attempts
NAMES_REFRESH_S = 60.0  # a process records a breaker's name again after this
WINDOW_SLOTS = 10  # buckets of the rate mode's sliding window (breaker.lua's SLOTS)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerSpec:
    """When a breaker trips and how it recovers. `failure_rate` set: the rate mode."""

    name: str
    failure_threshold: int = 5
    failure_rate: float | None = None
    window_ms: int = 60_000
    min_calls: int = 10
    recovery_ms: int = 60_000
    half_open_probes: int = 1

    @property
    def mode(self) -> str:
        return "consecutive" if self.failure_rate is None else "rate"


class Permit(NamedTuple):
    """A call admitted by a breaker, to be recorded (or released) when it ends."""

    name: str
    generation: int  # -1: admitted while Redis was unreachable; nothing is recorded
    probe: bool


class Verdict(NamedTuple):
    """What the breaker said: admitted or not, and its state after the call to Redis."""

    allowed: bool
    probe: bool
    state: str
    generation: int
    wait_ms: int  # refused: until the next probe
    failures: int  # consecutive failures counted
    transition: str  # "" or the state this call moved the breaker to


UNREACHABLE = Verdict(True, False, CLOSED, -1, 0, 0, "")


class CircuitStore:
    """The breakers of one namespace, as seen by one process.

    Parameters:
      client: the Redis client.
      namespace: the key prefix.
      on_transition: called with (name, verdict) when a call of this process moved a breaker
        (once per transition, fleet-wide).
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        namespace: str,
        on_transition: Callable[[str, Verdict], None] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.script = load(client, "breaker")
        self.channel = f"{namespace}:breakers:events"
        self.names_key = f"{{{namespace}:breaker-names}}"  # one key, hash-tagged like every other
        self.on_transition = on_transition
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Verdict, float]] = {}
        self._versions: dict[str, int] = {}  # bumped when a breaker's cache entry is dropped
        self._epoch = 0  # bumped when every entry is dropped (subscribed anew, or the subscription lost)
        self._pending: dict[str, int] = {}  # rate mode: successes not written yet
        self._named: dict[str, float] = {}  # name -> when this process last recorded it (monotonic)
        self._listener: _Listener | None = None
        self._unreachable = False

    def key(self, name: str) -> str:
        return f"{{{self.namespace}:breaker:{name}}}"

    # -- calls ---------------------------------------------------------------------------

    def acquire(self, spec: BreakerSpec) -> tuple[Permit | None, Verdict]:
        """Admit a call (a permit) or refuse it (None, and the verdict says how long to wait)."""
        cached = self._cached(spec.name)
        if cached is not None:
            return Permit(spec.name, cached.generation, False), cached
        verdict = self._run(spec, "acquire", self._take_pending(spec))
        if not verdict.allowed:
            return None, verdict
        return Permit(spec.name, verdict.generation, verdict.probe), verdict

    def record(self, spec: BreakerSpec, permit: Permit, *, failed: bool, error: str = "") -> Verdict | None:
        """The result of an admitted call: a failure that counts, or a success. Returns the
        breaker's state after it (None when nothing had to be written: a success, closed)."""
        if permit.generation < 0:
            return None
        if not failed and not permit.probe:
            cached = self._cached(spec.name)
            if cached is not None and cached.generation == permit.generation:
                if spec.mode == "rate":
                    with self._lock:
                        self._pending[spec.name] = self._pending.get(spec.name, 0) + 1
                    return None
                if cached.failures == 0:
                    return None  # nothing to reset
        pending = self._take_pending(spec)
        return self._run(spec, "record", pending, permit.generation, int(permit.probe), int(failed), error[:200])

    def release(self, spec: BreakerSpec, permit: Permit) -> None:
        """An admitted call that did not run: a probe's place goes to another call."""
        if permit.probe and permit.generation >= 0:
            self._run(spec, "release", 0, permit.generation, 1)

    # -- operations ----------------------------------------------------------------------

    def reset(self, spec: BreakerSpec) -> Verdict:
        """Close the breaker now, its counts cleared."""
        return self._run(spec, "reset", 0)

    def force_open(self, spec: BreakerSpec, *, for_ms: int = 0) -> Verdict:
        """Open the breaker now, for `for_ms` (0: until reset), e.g. for a maintenance window."""
        return self._run(spec, "open", max(0, int(for_ms)))

    def count(self, name: str, counter: str, amount: int = 1) -> None:
        """Add to one of the breaker's own counters (`dropped_total`, ...)."""
        try:
            self.client.hincrby(self.key(name), counter, amount)
        except CONNECTION_ERRORS:
            logger.warning("Breaker %r: counter %s not written (Redis unreachable).", name, counter)

    def declare(self, names: Iterable[str]) -> None:
        """Record breaker names in Redis (a worker's declared breakers, at boot), for operators."""
        names = list(names)
        if names:
            self.client.sadd(self.names_key, *names)
            self._named.update(dict.fromkeys(names, time.monotonic()))

    def names(self) -> list[str]:
        """Every breaker some process used or an operator touched, from Redis."""
        return sorted(as_text(n) for n in self.client.smembers(self.names_key))

    def status(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Each breaker's state as operators read it (plain data; times in seconds)."""
        names = list(names)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.key(name))
        now = now_ms()
        return {name: describe(raw, now) for name, raw in zip(names, pipe.execute(), strict=True)}

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    # -- internals -----------------------------------------------------------------------

    def _cached(self, name: str) -> Verdict | None:
        listener = self._listener
        if listener is None or not listener.live or listener.pid != os.getpid():
            return None
        with self._lock:
            entry = self._cache.get(name)
        if entry is None or time.monotonic() - entry[1] > CACHE_TTL_S:
            return None
        return entry[0]

    def _take_pending(self, spec: BreakerSpec) -> int:
        if spec.mode != "rate":
            return 0
        with self._lock:
            return self._pending.pop(spec.name, 0)

    def _run(self, spec: BreakerSpec, op: str, *extra: Any) -> Verdict:
        self._ensure_listener()
        with self._lock:
            version = (self._epoch, self._versions.get(spec.name, 0))
        args = [
            op,
            now_ms(),
            spec.mode,
            spec.failure_threshold,
            spec.failure_rate or 0,
            spec.window_ms,
            spec.min_calls,
            spec.recovery_ms,
            spec.half_open_probes,
            HALF_OPEN_WAIT_MS,
            self.channel,
            spec.name,
            *extra,
        ]
        try:
            if self._named.get(spec.name, -NAMES_REFRESH_S) < time.monotonic() - NAMES_REFRESH_S:
                self.client.sadd(self.names_key, spec.name)  # again now and then: Redis may have lost it
                self._named[spec.name] = time.monotonic()
            reply = self.script(keys=[self.key(spec.name)], args=args)
        except CONNECTION_ERRORS as exc:
            if not self._unreachable:
                logger.warning("Breaker %r: Redis unreachable (%s); calls are admitted uncounted.", spec.name, exc)
            self._unreachable = True
            return UNREACHABLE
        self._unreachable = False
        allowed, probe, state, generation, wait_ms, failures, transition = reply
        verdict = Verdict(
            bool(allowed),
            bool(probe),
            as_text(state),
            int(generation),
            int(wait_ms),
            int(failures),
            as_text(transition),
        )
        listener = self._listener
        with self._lock:
            # Cached only if no transition (nor a new subscription) came between the call and now.
            fresh = (self._epoch, self._versions.get(spec.name, 0)) == version
            fresh = fresh and listener is not None and listener.live
            if verdict.state == CLOSED and fresh:
                self._cache[spec.name] = (verdict, time.monotonic())
            else:
                self._cache.pop(spec.name, None)
        if verdict.transition and self.on_transition is not None:
            self.on_transition(spec.name, verdict)
        return verdict

    def _drop(self, name: str | None) -> None:
        """Forget the cached state of `name` (None: of every breaker)."""
        with self._lock:
            names = list(self._cache) if name is None else [name]
            for n in names:
                self._cache.pop(n, None)
                self._versions[n] = self._versions.get(n, 0) + 1
            if name is None:
                self._epoch += 1

    def _ensure_listener(self) -> None:
        listener = self._listener
        if listener is not None and listener.pid == os.getpid() and listener.is_alive():
            return
        with self._lock:
            if self._listener is listener:
                self._listener = _Listener(self.client, self.channel, self._drop)
                self._listener.start()


class _Listener(threading.Thread):
    """Subscribes to breaker transitions and drops cached states as they arrive; `live` only
    while subscribed (a lost connection drops every cached state, then resubscribes)."""

    def __init__(self, client: redis.Redis, channel: str, drop: Callable[[str | None], None]) -> None:
        super().__init__(name="triage-breakers", daemon=True)
        self.client, self.channel, self.drop = client, channel, drop
        self.pid = os.getpid()
        self.live = False
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        self.live = False

    def run(self) -> None:
        while not self._stopped.is_set():
            pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.drop(None)  # what was read before the subscription may have missed a transition
                        self.live = True
                    elif message["type"] == "message":
                        self.drop(as_text(message["data"]))
            except Exception:  # the connection dropped (or Redis restarted): trust nothing cached
                self.live = False
                self.drop(None)
                self._stopped.wait(RECONNECT_S)
            finally:
                self.live = False
                try:
                    pubsub.close()
                except Exception:  # closing a broken connection may fail too
                    logger.debug("closing the breakers subscription failed", exc_info=True)


def describe(raw: dict[Any, Any], now: int) -> dict[str, Any]:
    """A breaker's hash as plain data for operators."""
    fields = {as_text(k): as_text(v) for k, v in raw.items()}

    def number(name: str) -> int:
        try:
            return int(float(fields.get(name, "0")))
        except ValueError:
            return 0

    state = fields.get("state", CLOSED)
    open_until = number("open_until")
    calls = failures_in_window = 0
    window_ms = number("window_ms")
    if window_ms > 0:
        width = max(1, -(-window_ms // WINDOW_SLOTS))
        epoch = now // width
        for slot in range(WINDOW_SLOTS):
            value = fields.get(f"w{slot}")
            if value:
                e, c, f = (int(x) for x in value.split(":"))
                if e > epoch - WINDOW_SLOTS:
                    calls, failures_in_window = calls + c, failures_in_window + f
    next_probe = None
    if state == OPEN:
        next_probe = None if open_until == 0 else max(0.0, (open_until - now) / 1000)
    return {
        "state": state,
        "forced": fields.get("forced") == "1",
        "failures": number("failures"),
        "window_calls": calls,
        "window_failures": failures_in_window,
        "next_probe_in_seconds": next_probe,
        "probes_admitted": number("probes") if state == HALF_OPEN else 0,
        "rejected_total": number("rejected_total"),
        "dropped_total": number("dropped_total"),
        "opened_total": number("opened_total"),
        "half_opened_total": number("half_opened_total"),
        "closed_total": number("closed_total"),
        "failures_total": number("failures_total"),
        "last_error": fields.get("last_error", ""),
        "changed_at_ms": number("changed_at") or None,
        "mode": fields.get("mode", ""),
        "failure_threshold": number("threshold"),
        "recovery_seconds": number("recovery_ms") / 1000,
        "half_open_probes": number("probes_max"),
    }
