"""Retries: the tier's retry policy, and dead letters that say why. Replaces Dramatiq's `Retries`.

The life of a failed message, in plain words: an actor raises. If the exception is one the
actor is declared to die on (`dead_on`, Dramatiq's `throws`), or not one of those it retries
on (`retry_on`), the message goes to the dead letters at once, reason `dead_on`. Otherwise,
while it has retries left (`max_retries`, or Dramatiq's `retry_when`), it comes back after a
backoff: `exponential` (the n-th retry waits a random time between `min_backoff` and
min(`max_backoff`, `min_backoff` x `backoff_factor`^(n-1)): full jitter above the floor) or
`linear` (n x `min_backoff`, at most `max_backoff`), or the delay of a `dramatiq.Retry(delay=)`
it raised. It keeps its priority and tenant, and goes to `retry_queue` once it has failed
`retry_queue_after` times (demotion, as Sidekiq's `retry_queue`). When no retry is left it
goes to the dead letters, reason `exhausted`, and the actor named by `on_retry_exhausted` gets
a message, as with Dramatiq. The message carries only its retry count and the time of its
first failure (`retries`, `triage_first_failure_ms`): it does not grow with each retry; the
last error is kept with the dead letter, not in the message.

An actor that raises `Defer(delay_ms=...)` is not failing: its message goes back after the
delay, the same message, with no retry used and no delivery counted.

Guarantees: the decision is applied by the broker in the same script call that forgets the
failed delivery (`triage.broker.outcome`): a retry that cannot be written leaves the message
in flight, applied once Redis answers or reclaimed if the worker dies; it is never acked
without its retry. Declared per tier (the tier's actor options) and per actor (decorator
options), a message option overriding both.
Failure mode: a decision that fails (a `retry_when` that raises, an option of the wrong
type) sends the message to the dead letters, reason `exhausted`, with the error logged; a
message-level `retry_queue` that this worker does not declare is ignored (logged).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from dramatiq import Actor, Broker, Middleware
from dramatiq.errors import ActorNotFound, Retry
from dramatiq.message import Message

from triage.broker.clock import now_ms
from triage.broker.outcome import outcome_of
from triage.broker.redis_broker import TriageBroker, triage_broker

from .declaration import InvalidActorOption

logger = logging.getLogger(__name__)

FIRST_FAILURE_OPTION = "triage_first_failure_ms"
DEFAULTS: dict[str, Any] = {
    "max_retries": 20,
    "min_backoff": 15_000,
    "max_backoff": 7 * 86_400_000,
    "backoff": "exponential",
    "backoff_factor": 2.0,
    "retry_queue_after": 0,
}


class Defer(Retry):
    """Raised by an actor: run this message again after `delay_ms`, without using a retry.

    (A `dramatiq.Retry`, so that Dramatiq's worker does not log it as an error.)"""

    def __init__(self, delay_ms: int = 0, message: str = "") -> None:
        super().__init__(message or f"deferred by {delay_ms} ms", delay=delay_ms)
        self.delay_ms = max(0, int(delay_ms))


def backoff_ms(
    kind: str, attempt: int, *, min_ms: int, max_ms: int, factor: float, rng: Callable[[float, float], float]
) -> int:
    """The wait before retry number `attempt` (1 for the first retry)."""
    if kind == "linear":
        return int(min(max_ms, min_ms * attempt))
    ceiling = min(float(max_ms), min_ms * factor ** min(attempt - 1, 64))  # no float overflow, ever
    return int(rng(min_ms, max(min_ms, ceiling)))


class RetryPolicy(Middleware):
    """Retries failed messages by the actor's policy, else dead-letters them with a reason.

    Parameters:
      rng: the uniform random source of the jitter (`random.uniform`; tests pass their own).
    """

    def __init__(self, *, rng: Callable[[float, float], float] = random.uniform) -> None:
        self.rng = rng

    @property
    def actor_options(self) -> set[str]:
        return {
            "max_retries",
            "min_backoff",
            "max_backoff",
            "backoff",
            "backoff_factor",
            "retry_on",
            "dead_on",
            "throws",
            "retry_when",
            "retry_queue",
            "retry_queue_after",
            "on_retry_exhausted",
        }

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        backoff = actor.options.get("backoff", "exponential")
        if backoff not in ("exponential", "linear"):
            raise InvalidActorOption(
                f"actor {actor.actor_name!r}: backoff must be 'exponential' or 'linear', got {backoff!r}"
            )
        for name in ("retry_on", "dead_on"):
            value = actor.options.get(name)
            if value is not None and not _exception_types(value):
                raise InvalidActorOption(
                    f"actor {actor.actor_name!r}: {name} must be an exception class or a tuple of them"
                )

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None or outcome_of(message) is not None:
            return  # succeeded, or settled by a policy that ran before (an open breaker's)
        triage = triage_broker(broker, needed_by=self)
        if isinstance(exception, Defer):
            triage.defer(message, delay_ms=exception.delay_ms)
            return
        try:
            self._decide(triage, message, exception)
        except Exception:  # a policy that fails (a retry_when that raises, a bad option) must not ack the message
            logger.exception("Retry policy failed for message %s; dead-lettered instead.", message)
            triage.dead_letter_as(message, "exhausted")

    def _decide(self, triage: TriageBroker, message: Any, exception: BaseException) -> None:
        try:
            actor_options = triage.get_actor(message.actor_name).options
        except ActorNotFound:
            actor_options = {}

        def option(name: str) -> Any:
            return message.options.get(name, actor_options.get(name, DEFAULTS.get(name)))

        if _dies_on(exception, option("dead_on"), option("throws"), option("retry_on")):
            logger.info("Message %s failed with %s: dead-lettered without retry.", message, type(exception).__name__)
            triage.dead_letter_as(message, "dead_on")
            return
        retries = int(message.options.get("retries", 0))
        retry_when = option("retry_when")
        max_retries = option("max_retries")
        if retry_when is not None:
            exhausted = not retry_when(retries, exception)
        else:
            exhausted = max_retries is not None and retries >= max_retries
        if exhausted:
            logger.warning("Retries exhausted for message %s (%d retries).", message, retries)
            triage.dead_letter_as(message, "exhausted")
            self._notify_exhausted(triage, message, option("on_retry_exhausted"), retries, max_retries)
            return
        attempt = retries + 1
        if isinstance(exception, Retry) and exception.delay is not None:
            delay = int(exception.delay)
        else:
            delay = backoff_ms(
                option("backoff"),
                attempt,
                min_ms=int(option("min_backoff")),
                max_ms=int(option("max_backoff")),
                factor=float(option("backoff_factor")),
                rng=self.rng,
            )
        queue_name = message.queue_name
        if option("retry_queue") and attempt >= int(option("retry_queue_after")):
            queue_name = option("retry_queue")
            if queue_name not in triage.get_declared_queues():
                logger.warning("retry_queue %r of message %s is not a declared queue: it retries on its own.",
                               queue_name, message)  # fmt: skip
                queue_name = message.queue_name
        options = {**message.options, "retries": attempt}
        options.setdefault(FIRST_FAILURE_OPTION, now_ms())
        retried: Message[Any] = message._message.copy(queue_name=queue_name, options=options)
        triage.retry_later(message, retried, delay_ms=delay)
        logger.info("Retrying message %s in %d ms (retry %d, queue %r).", message, delay, attempt, queue_name)

    def _notify_exhausted(
        self, broker: Broker, message: Any, target: str | None, retries: int, max_retries: int | None
    ) -> None:
        if not target:
            return
        try:
            broker.get_actor(target).send(message.asdict(), {"retries": retries, "max_retries": max_retries})
        except Exception:  # the message is dead-lettered either way; the notification is best effort
            logger.exception("on_retry_exhausted actor %r could not be sent message %s.", target, message)


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    if all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        return types
    return ()


def _dies_on(exception: BaseException, dead_on: Any, throws: Any, retry_on: Any) -> bool:
    if dead_on and isinstance(exception, _exception_types(dead_on)):
        return True
    if throws and isinstance(exception, _exception_types(throws)):
        return True
    return bool(retry_on) and not isinstance(exception, _exception_types(retry_on))
