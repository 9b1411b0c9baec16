"""Circuit breakers: fail fast on a failing dependency; defer or demote instead of burning retries.

Two ways to use a named breaker (declared in the service's `config.BREAKERS`):
- around an outbound call in actor code, `with triage.breaker("telegram"): ...` (or as a
  decorator): an open breaker raises `CircuitOpen` at once, with `retry_after` seconds
  until its next probe; the call's result is recorded on the breaker;
- as an actor option, `circuit="telegram"` (or a list): the gate runs before the message.
  An open breaker applies the actor's `on_open` policy, the message's own option winning:
  `defer` (the default: the same message back after the time to the next probe, priority,
  tenant and retries kept), `background` (moved to the background tier's queue, to run
  there when the breaker lets it; already there, it is deferred), `dead_letter` (reason
  `circuit-open`) or `drop` (acked, logged and counted as `dropped_total`). With
  `pause_queue_on_open=True` the message's queue is paused until the next probe time (a
  queue dedicated to the dependency: its messages wait in place, not fetched at all); it is
  resumed when the breaker closes. The result of a message that ran is recorded; a failure
  that finds its breaker open (the one that tripped it, and those in flight then) gets the
  `on_open` policy too rather than a retry: the dependency is down, the message is not at
  fault. A `CircuitOpen` raised by actor code gets the same `on_open` policy.

Guarantees: the policy is a settlement like a retry's (`triage.broker.outcome`): applied in
the script call that forgets the delivery, so a deferral that cannot be written leaves the
message in flight. A deferred message is not fetched before the breaker's next probe time
(a jitter of up to 10 %, at most a second, spreads the recovery). What counts as a failure:
every exception but `CircuitOpen`, except those the breaker `ignore`s or its `counts`
function rejects; an exception that does not count is a success (the dependency answered).
Every state change is logged once, fleet-wide, at WARNING.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from dramatiq import Actor, Broker, Middleware
from dramatiq.errors import ActorNotFound

from triage.broker.breaker_state import CLOSED, Permit, Verdict
from triage.broker.redis_broker import TriageBroker, triage_broker

from .circuit import Breaker, BreakerBoard, CircuitOpen, UnknownBreaker, held
from .declaration import InvalidActorOption

logger = logging.getLogger(__name__)

ON_OPEN = ("defer", "background", "dead_letter", "drop")
DEAD_REASON = "circuit-open"
MAX_JITTER_MS = 1000
_PERMITS = "_triage_permits"


def circuit_names(value: Any) -> tuple[str, ...]:
    """The `circuit` option as a tuple of names (a name, a list of names, or none)."""
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


class CircuitBreakers(Middleware):
    """The `circuit=` gate and the `on_open` policies.

    Parameters:
      board: the declared breakers.
      demote_to: the queue a message of a queue goes to under `on_open="background"`
        (None: it is on a background queue already, and is deferred instead).
      rng: the uniform random source of the jitter.
    """

    def __init__(
        self,
        *,
        board: BreakerBoard,
        demote_to: Callable[[str], str | None],
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.board = board
        self.demote_to = demote_to
        self.rng = rng
        self.broker: TriageBroker | None = None
        board.listeners.append(self._resume_on_close)

    @property
    def actor_options(self) -> set[str]:
        return {"circuit", "on_open", "pause_queue_on_open"}

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        self.broker = triage_broker(broker, needed_by=self)
        where = f"actor {actor.actor_name!r}"
        try:
            for name in circuit_names(actor.options.get("circuit")):
                self.board[name]
        except (UnknownBreaker, TypeError) as exc:
            raise InvalidActorOption(f"{where}: circuit: {exc}") from None
        on_open = actor.options.get("on_open", "defer")
        if on_open not in ON_OPEN:
            raise InvalidActorOption(f"{where}: on_open must be one of {', '.join(ON_OPEN)}, got {on_open!r}")
        if not isinstance(actor.options.get("pause_queue_on_open", False), bool):
            raise InvalidActorOption(f"{where}: pause_queue_on_open must be True or False")

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        try:  # so that operators can open a declared breaker before its first call
            self.board.store.declare(self.board.breakers)
        except Exception:
            logger.warning("Breaker names not recorded in Redis (unreachable); they will be at first use.")

    def before_process_message(self, broker: Broker, message: Any) -> None:
        names = circuit_names(self._option(broker, message, "circuit"))
        if not names:
            return
        permits: list[tuple[Breaker, Permit]] = []
        for name in names:
            breaker = self.board[name]
            try:
                permits.append((breaker, breaker.permit()))
            except CircuitOpen:
                for admitted, permit in permits:
                    admitted.release(permit)
                raise
        message.__dict__[_PERMITS] = permits
        held().update((breaker.name, permit) for breaker, permit in permits)

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        tripped = None
        for breaker, permit in self._take_permits(message):
            tripped = breaker.finish(permit, exception) or tripped
        if isinstance(exception, CircuitOpen):
            self._on_open(triage_broker(broker, needed_by=self), message, exception)
        elif tripped is not None:  # it failed because the dependency is down: no retry used
            logger.info("Message %s failed and opened breaker %r: on_open applies.", message, tripped.breaker)
            self._on_open(triage_broker(broker, needed_by=self), message, tripped)

    def after_skip_message(self, broker: Broker, message: Any) -> None:
        for breaker, permit in self._take_permits(message):
            breaker.release(permit)

    def _take_permits(self, message: Any) -> list[tuple[Breaker, Permit]]:
        permits: list[tuple[Breaker, Permit]] = message.__dict__.pop(_PERMITS, [])
        held().clear()
        return permits

    def _option(self, broker: Broker, message: Any, name: str, default: Any = None) -> Any:
        if name in message.options:
            return message.options[name]
        try:
            return broker.get_actor(message.actor_name).options.get(name, default)
        except ActorNotFound:
            return default

    def _on_open(self, broker: TriageBroker, message: Any, exc: CircuitOpen) -> None:
        policy = self._option(broker, message, "on_open", "defer")
        wait_ms = max(1, exc.delay_ms)
        delay_ms = wait_ms + int(self.rng(0, min(MAX_JITTER_MS, wait_ms // 10)))
        if self._option(broker, message, "pause_queue_on_open", False) and policy in ("defer", "background"):
            try:
                if broker.pause_for(message.queue_name, ms=wait_ms, owner=_owner(exc.breaker)):
                    logger.warning(
                        "Queue %r paused for %.1f s: circuit breaker %r is open.",
                        message.queue_name,
                        wait_ms / 1000,
                        exc.breaker,
                    )
            except Exception:  # the pause is an economy; the message is deferred either way
                logger.warning("Queue %r could not be paused for breaker %r.", message.queue_name, exc.breaker)
        target = self.demote_to(message.queue_name) if policy == "background" else None
        if policy == "dead_letter":
            broker.dead_letter_as(message, DEAD_REASON)
        elif policy == "drop":
            broker.ack_as_done(message)
            self.board.store.count(exc.breaker, "dropped_total")
            logger.warning("Message %s dropped: circuit breaker %r is open (on_open='drop').", message, exc.breaker)
        elif target is not None:
            broker.move_later(message, message._message.copy(queue_name=target), delay_ms=delay_ms)
            logger.info("Message %s moved to queue %r: circuit breaker %r is open.", message, target, exc.breaker)
        else:
            broker.defer(message, delay_ms=delay_ms)

    def _resume_on_close(self, name: str, verdict: Verdict) -> None:
        """A breaker this process closed: resume the queues it paused (of the actors declared here)."""
        if verdict.transition != CLOSED or self.broker is None:
            return
        for queue in sorted(self.broker.get_declared_queues()):
            try:
                if self.broker.resume_if_paused_by(queue, _owner(name)):
                    logger.warning("Queue %r resumed: circuit breaker %r closed.", queue, name)
            except Exception:  # the pause ends by itself at the next probe time
                logger.warning("Queue %r could not be resumed for breaker %r.", queue, name, exc_info=True)


def _owner(breaker: str) -> str:
    return f"breaker:{breaker}"
