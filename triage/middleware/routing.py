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
Failure mode: a queue bound to two tiers, or an unknown `retry_queue`, raises
`RoutingError` at declaration.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq import Actor, Broker, Middleware
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

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        retry_queue = actor.options.get("retry_queue")
        if retry_queue is not None and self.taxonomy.tier_of_queue(retry_queue) is None:
            known = ", ".join(self.taxonomy.queues)
            raise RoutingError(
                f"actor {actor.actor_name!r}: retry_queue {retry_queue!r} is neither a tier nor a declared "
                f"queue ({known}); no worker would consume its retries"
            )
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
