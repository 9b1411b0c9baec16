"""Routing: every actor lands on a tier's queue, with the tier's policies.

Guarantees:
- At declaration, an actor declared with a tier decorator keeps the tier and queue it
  asked for; a plain `@dramatiq.actor` left on Dramatiq's implicit `default` queue is
  routed by name (`triage.routing`, rules from the service's config); a plain actor on an explicit queue keeps it,
  and a queue no tier knows joins the `default` tier (logged), so a worker consumes it.
- Every routed actor gets its tier's retry policy and time limit unless it set its
  own, and Dramatiq's worker-side priority derived from the tier (critical first).
- Each actor records its default message priority (`message_priority`: the
  decorator's `priority=`, else the tier's), which `placement.py` applies at enqueue.
- An actor's `retry_queue` must be a queue some tier consumes.
- At send, `send_with_options(queue_name="reports")` (as Celery's `apply_async(queue=)`)
  puts the message on that queue, where the worker that consumes it runs it with the actor it
  names. The queue must be one the taxonomy declares (a tier, or an extra queue). The message
  takes the policies of that queue's tier in place of those the actor took from its own
  (retries, backoff, time limit, retry queue; `placement.py` does the same for the default
  priority); what the actor or the message set itself is kept. The option itself is not kept
  in the message. A message-level `retry_queue` must be a declared queue too.
- A worker whose `--queues` names a queue that no tier declares says so at boot (a warning
  naming it): it does not consume it.
Failure mode: a queue bound to two tiers, or an unknown `retry_queue`, raises
`RoutingError` at declaration; an unknown `queue_name` or `retry_queue` given at send raises
`RoutingError` there, and nothing is enqueued. Each names the queue, where to declare it, and
the worker (`--queues`) that would have to run it.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq import Actor, Broker, Middleware
from dramatiq.errors import ActorNotFound
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError

from triage.broker.priority import check_priority
from triage.routing import Router
from triage.settings import TierName
from triage.tiers import Taxonomy, Tier

logger = logging.getLogger(__name__)

DRAMATIQ_DEFAULT_QUEUE = "default"


class RoutingError(MiddlewareError, ValueError):
    """An actor cannot be bound to a tier (e.g. its queue belongs to another tier)."""


class Routing(Middleware):
    """Binds actors to tiers at declaration."""

    def __init__(self, *, router: Router, taxonomy: Taxonomy) -> None:
        self.router = router
        self.taxonomy = taxonomy

    @property
    def actor_options(self) -> set[str]:
        return {"tier", "message_priority"}

    def tier_actor_kwargs(
        self, tier_name: TierName, *, actor_name: str, queue: str | None, priority: int | None
    ) -> dict[str, Any]:
        """The `dramatiq.actor` keyword arguments for an actor declared with a tier decorator."""
        tier = self.taxonomy.tiers[tier_name]
        queue_name = queue or tier_name
        self._bind(queue_name, tier_name)
        message_priority = tier.priority if priority is None else check_priority(priority, actor_name=actor_name)
        return {
            "queue_name": queue_name,
            "priority": tier.actor_priority,
            "tier": tier_name,
            "message_priority": message_priority,
            **tier.actor_options(),
        }

    def _bind(self, queue_name: str, tier_name: TierName) -> None:
        try:
            self.taxonomy.add_queue(queue_name, tier_name)
        except ValueError as exc:
            raise RoutingError(str(exc)) from None

    def declared_tier(self, queue_name: Any, *, where: str, option: str) -> Tier:
        """The tier of `queue_name`, or a `RoutingError` that names `option`, the queue, where to
        declare it and the worker that would have to run it."""
        if not isinstance(queue_name, str) or not queue_name:
            raise RoutingError(f"{where}: {option} must be a queue name, got {queue_name!r:.60}")
        tier = self.taxonomy.tier_of_queue(queue_name)
        if tier is None:
            known = ", ".join(self.taxonomy.queues)
            raise RoutingError(
                f"{where}: {option} {queue_name!r} is neither a tier nor a declared queue ({known}), so no "
                f"worker consumes it; declare it in config.QUEUES (or TRIAGE_QUEUES) with its tier, and run "
                f"a worker with --queues {queue_name} (the Procfile's worker of that tier runs `triage queues TIER`)"
            )
        return tier

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        retry_queue = actor.options.get("retry_queue")
        if retry_queue is not None:
            self.declared_tier(retry_queue, where=f"actor {actor.actor_name!r}", option="retry_queue")
        if "tier" in actor.options:
            return  # declared through a tier decorator, already bound
        tier = self._route_plain_actor(actor)
        if actor.priority == 0:  # Dramatiq's default: take the tier's
            actor.priority = tier.actor_priority
        for key, value in tier.actor_options().items():
            actor.options.setdefault(key, value)
        actor.options["tier"] = tier.name
        actor.options.setdefault("message_priority", tier.priority)
        logger.debug("Actor %r routed to queue %r (tier %s).", actor.actor_name, actor.queue_name, tier.name)

    def _route_plain_actor(self, actor: Actor[Any, Any]) -> Tier:
        if actor.queue_name == DRAMATIQ_DEFAULT_QUEUE:
            route = self.router.route(actor.actor_name)
            actor.queue_name = route.queue_name
            return route.tier
        tier = self.taxonomy.tier_of_queue(actor.queue_name)
        if tier is None:
            logger.warning(
                "Actor %r uses queue %r, which no tier declares; it joins the default tier "
                "(declare it with TRIAGE_QUEUES to choose another).",
                actor.actor_name,
                actor.queue_name,
            )
            self._bind(actor.queue_name, "default")
            tier = self.taxonomy.tiers["default"]
        return tier

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        asked = getattr(worker, "consumer_whitelist", None) or set()
        for queue_name in sorted(set(asked) - broker.get_declared_queues()):
            logger.warning(
                "--queues names %r, which no tier declares: this worker does not consume it (declare it in "
                "config.QUEUES or TRIAGE_QUEUES with its tier; `triage queues` lists the declared ones).",
                queue_name,
            )

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        options = message.options
        if options.get("retry_queue") is not None:
            self.declared_tier(options["retry_queue"], where=f"actor {message.actor_name!r}", option="retry_queue")
        if "queue_name" not in options:
            return
        tier = self.declared_tier(options["queue_name"], where=f"actor {message.actor_name!r}", option="queue_name")
        queue_name = options.pop("queue_name")
        if queue_name == message.queue_name:
            return
        # Dramatiq's Message is frozen; the Triage broker hands its hooks the copy it is about to store.
        object.__setattr__(message, "queue_name", queue_name)
        try:
            actor = broker.get_actor(message.actor_name)
        except ActorNotFound:
            return
        own = self.taxonomy.tier_named(actor.options.get("tier"))
        if own is None or own.name == tier.name:
            return
        inherited, taken = own.actor_options(), tier.actor_options()
        for key in inherited.keys() | taken.keys():
            if key not in options and actor.options.get(key) == inherited.get(key) != taken.get(key):
                options[key] = taken.get(key)  # None: no retry queue on the queue's tier
