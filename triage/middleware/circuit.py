"""Named circuit breakers as a process sees them: `CircuitOpen`, `Breaker`, `BreakerBoard`.

Guarantees: a `Breaker` admits a call (`permit()`) or raises `CircuitOpen` at once, with the
seconds until the next probe; it records how each admitted call ended (`finish()`), deciding
what counts as a failure: every exception but `CircuitOpen`, except those the breaker
`ignore`s or its `counts` function rejects (a function that fails counts the failure); an
exception that does not count is a success (the dependency answered). The state itself is
in Redis (`triage.broker.breaker_state`). The board logs each transition this process made
at WARNING: once per transition, fleet-wide.

A thread that runs a message gated by `circuit=` holds that message's permits (`held()`): a
guard on the same breaker inside the actor uses them rather than asking for a second permit,
which a half-open breaker with one probe would refuse (and the message never get through).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from dramatiq.middleware import MiddlewareError

from triage.broker.breaker_state import CLOSED, OPEN, BreakerSpec, CircuitStore, Permit, Verdict

from .retries import Defer

logger = logging.getLogger(__name__)
_held = threading.local()


def held() -> dict[str, Permit]:
    """The permits the current thread's message holds (set by the `circuit=` gate)."""
    permits: dict[str, Permit] | None = getattr(_held, "permits", None)
    if permits is None:
        permits = _held.permits = {}
    return permits


class CircuitOpen(Defer, MiddlewareError):
    """A breaker refused the call: `breaker` is its name, `retry_after` the seconds until its
    next probe. In an actor, it defers the message (no retry used) unless `on_open` says otherwise."""

    def __init__(self, breaker: str, retry_after_ms: int) -> None:
        wait_ms = max(0, int(retry_after_ms))
        super().__init__(wait_ms, f"circuit breaker {breaker!r} is open; next probe in {wait_ms / 1000:.1f} s")
        self.breaker = breaker
        self.retry_after = max(0, int(retry_after_ms)) / 1000


class UnknownBreaker(LookupError):
    """A breaker name that the configuration does not declare."""


class Breaker:
    """One named breaker of this process: its spec, what counts as a failure, its state in Redis."""

    def __init__(
        self,
        spec: BreakerSpec,
        store: CircuitStore,
        *,
        ignore: tuple[type[BaseException], ...] = (),
        counts: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.spec, self.store, self.ignore, self.counts = spec, store, ignore, counts

    @property
    def name(self) -> str:
        return self.spec.name

    def permit(self) -> Permit:
        """Admit a call, or raise `CircuitOpen` at once."""
        permit, verdict = self.store.acquire(self.spec)
        if permit is None:
            raise CircuitOpen(self.name, verdict.wait_ms)
        return permit

    def finish(self, permit: Permit, exception: BaseException | None) -> CircuitOpen | None:
        """Record how an admitted call ended (an exception that does not count is a success).
        Returns a `CircuitOpen` when the call failed and the breaker is open now (it tripped)."""
        if isinstance(exception, CircuitOpen):  # another breaker refused: this call said nothing
            self.store.release(self.spec, permit)
            return None
        failed = exception is not None and self.counts_as_failure(exception)
        verdict = self.store.record(self.spec, permit, failed=failed, error=type(exception).__name__ if failed else "")
        if failed and verdict is not None and verdict.state == OPEN:
            return CircuitOpen(self.name, verdict.wait_ms)
        return None

    def release(self, permit: Permit) -> None:
        self.store.release(self.spec, permit)

    def counts_as_failure(self, exception: BaseException) -> bool:
        if isinstance(exception, CircuitOpen) or (self.ignore and isinstance(exception, self.ignore)):
            return False
        if self.counts is None:
            return True
        try:
            return bool(self.counts(exception))
        except Exception:  # a predicate that fails must not hide the failure it was asked about
            logger.exception("Breaker %r: its counts function failed; the failure counts.", self.name)
            return True

    def __repr__(self) -> str:
        return f"<Breaker {self.name}>"


class BreakerBoard:
    """The breakers declared for this process, by name; logs each transition this process makes."""

    def __init__(self, store: CircuitStore, breakers: Mapping[str, Breaker]) -> None:
        self.store = store
        self.breakers = dict(breakers)
        self.listeners: list[Callable[[str, Verdict], None]] = []
        store.on_transition = self._transition

    def __getitem__(self, name: str) -> Breaker:
        try:
            return self.breakers[name]
        except KeyError:
            declared = ", ".join(sorted(self.breakers)) or "none"
            raise UnknownBreaker(
                f"no circuit breaker named {name!r} (declared: {declared}); declare it in the service's "
                f"config.BREAKERS or TRIAGE_BREAKERS"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.breakers

    def spec(self, name: str) -> BreakerSpec:
        """The declared spec, or the defaults for a breaker only Redis knows (operator commands)."""
        breaker = self.breakers.get(name)
        return breaker.spec if breaker is not None else BreakerSpec(name)

    def _transition(self, name: str, verdict: Verdict) -> None:
        if verdict.transition == OPEN:
            logger.warning(
                "Circuit breaker %r opened (failures: %d); calls are refused, next probe in %.1f s.",
                name,
                verdict.failures,
                verdict.wait_ms / 1000,
            )
        elif verdict.transition == CLOSED:
            logger.warning("Circuit breaker %r closed.", name)
        else:
            logger.warning("Circuit breaker %r half-open: admitting probes.", name)
        for listener in self.listeners:
            listener(name, verdict)
