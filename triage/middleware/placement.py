"""Placement: every message leaves with a valid priority (1-10) and, if any, a tenant.

Guarantees, before enqueue:
- Priority: the `priority` option if given; else, for a message sent from inside an
  actor, the parent message's priority (inheritance); else the actor's default (the
  decorator's `priority=`, else its tier's; for a message sent to another queue with
  `queue_name=`, the default of that queue's tier instead of the actor's tier's); else the
  default of the tier of its queue.
  An optional hook (`TRIAGE_PRIORITY_HOOK=module:function`, called with the message and
  the priority) may adjust it; the result is clamped to 1-10. A given priority that is
  not an integer from 1 to 10 raises `InvalidPriority` (a `ValueError`) and nothing is
  enqueued.
- Tenant: the `tenant` option if given; else the argument named by the actor's
  `tenant_arg`; else the parent message's tenant; else none (the shared tenant). A
  tenant must be a non-empty string of at most 128 characters, else `InvalidTenant`.
- A declared `tenant_arg` that is not a parameter of the actor is an error at declaration.
Failure mode: none silent; the producer gets the exception at `send()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dramatiq import Actor, Broker, Middleware
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage, MiddlewareError

from triage.broker.priority import check_priority, clamp_priority
from triage.tiers import Taxonomy, Tier

PriorityHook = Callable[[Message[Any], int], int]
MAX_TENANT_LENGTH = 128


class InvalidTenant(MiddlewareError, ValueError):
    """A tenant that is not a non-empty string of at most 128 characters."""


def check_tenant(value: Any, *, actor_name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TENANT_LENGTH:
        raise InvalidTenant(
            f"actor {actor_name!r}: tenant must be a non-empty string of at most "
            f"{MAX_TENANT_LENGTH} characters, got {value!r:.60}"
        )
    return value


class Placement(Middleware):
    """Gives every message its priority and tenant before enqueue (see the module docstring).

    Parameters:
      taxonomy: the tiers, for the default priority of a queue's tier.
      hook: optional `hook(message, priority) -> int`, whose result is clamped to 1-10.
    """

    def __init__(self, *, taxonomy: Taxonomy, hook: PriorityHook | None = None) -> None:
        self.taxonomy = taxonomy
        self.hook = hook
        self._tenant_position: dict[str, tuple[str, int | None]] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"tenant_arg"}

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        name = actor.options.get("tenant_arg")
        if name is None:
            return
        params = list(inspect.signature(actor.fn).parameters.values())
        names = [p.name for p in params]
        if name not in names:
            raise InvalidTenant(f"actor {actor.actor_name!r}: tenant_arg {name!r} is not one of its parameters {names}")
        index = names.index(name)
        positional = params[index].kind in (
            params[index].POSITIONAL_ONLY,
            params[index].POSITIONAL_OR_KEYWORD,
        )
        self._tenant_position[actor.actor_name] = (name, index if positional else None)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        options = message.options
        parent = CurrentMessage.get_current_message()
        if "priority" in options:
            priority = check_priority(options["priority"], actor_name=message.actor_name)
        elif parent is not None and "priority" in parent.options:
            priority = parent.options["priority"]
        else:
            priority = self._default_priority(broker, message)
        if self.hook is not None:
            priority = clamp_priority(int(self.hook(message, priority)))
        options["priority"] = priority

        tenant = options.get("tenant")
        if tenant is None:
            tenant = self._tenant_from_args(message)
        if tenant is None and parent is not None:
            tenant = parent.options.get("tenant")
        if tenant is not None:
            options["tenant"] = check_tenant(tenant, actor_name=message.actor_name)

    def _default_priority(self, broker: Broker, message: Message[Any]) -> int:
        try:
            actor = broker.get_actor(message.actor_name)
            priority = int(actor.options["message_priority"])
        except (ActorNotFound, KeyError):
            return self._queue_tier(message).priority
        if message.queue_name != actor.queue_name:  # sent to another queue (`queue_name=`)
            own = self.taxonomy.tier_named(actor.options.get("tier"))
            if own is not None and priority == own.priority:  # the actor's tier's, not its own
                return self._queue_tier(message).priority
        return priority

    def _queue_tier(self, message: Message[Any]) -> Tier:
        return self.taxonomy.tier_of_queue(q_name(message.queue_name)) or self.taxonomy.tiers["default"]

    def _tenant_from_args(self, message: Message[Any]) -> Any:
        position = self._tenant_position.get(message.actor_name)
        if position is None:
            return None
        name, index = position
        if name in message.kwargs:
            return message.kwargs[name]
        if index is not None and index < len(message.args):
            return message.args[index]
        return None
