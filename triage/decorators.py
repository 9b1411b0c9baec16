"""Tier decorators: `@critical`, `@default`, `@background`, bare or with options.

Guarantees:
- `@critical` and `@critical(...)` declare a Dramatiq actor bound to the tier: its
  queue (the tier's own, or `queue=`, which then joins the tier), its default message
  priority (`priority=`, 1-10, else the tier's), the tier's retry policy and time
  limit unless overridden, and Dramatiq's worker-side priority derived from the tier.
- An option that neither the decorator nor an installed middleware understands is a
  `ValueError` at declaration that names the actor, the option and what is allowed.
- Declaring uses the installed runtime; with none installed yet, the first declaration
  installs the defaults (settings from the environment, the default stack).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

import dramatiq
from dramatiq import Actor

from triage.runtime import current
from triage.settings import TierName

P = ParamSpec("P")
R = TypeVar("R")

_OWN_OPTIONS = {"queue", "priority", "actor_name"}
_RESERVED = {"tier", "message_priority"}  # set by the decorator itself
_HINTS = {"queue_name": "queue"}


class TierDecorator:
    def __init__(self, tier: TierName) -> None:
        self.tier = tier

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Actor[P, R]: ...

    @overload
    def __call__(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Actor[P, R]]: ...

    def __call__(
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> Actor[P, R] | Callable[[Callable[P, R]], Actor[P, R]]:
        if fn is None:
            return lambda f: self._declare(f, options)
        return self._declare(fn, options)

    def _declare(self, fn: Callable[P, R], options: dict[str, Any]) -> Actor[P, R]:
        runtime = current()
        actor_name = options.pop("actor_name", None) or fn.__name__
        allowed = (runtime.broker.actor_options - _RESERVED) | _OWN_OPTIONS
        unknown = sorted(set(options) - allowed)
        if unknown:
            hints = "".join(f" (use {_HINTS[o]}=)" for o in unknown if o in _HINTS)
            raise ValueError(
                f"@{self.tier} on {actor_name!r}: unknown option(s) {', '.join(unknown)}{hints}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        kwargs = runtime.routing.tier_actor_kwargs(
            self.tier,
            actor_name=actor_name,
            queue=options.pop("queue", None),
            priority=options.pop("priority", None),
        )
        kwargs.update(options)  # explicit max_retries, time_limit, ... win over the tier's
        declared: Actor[P, R] = dramatiq.actor(actor_name=actor_name, broker=runtime.broker, **kwargs)(fn)
        return declared

    def __repr__(self) -> str:
        return f"<tier decorator {self.tier}>"


critical = TierDecorator("critical")
default = TierDecorator("default")
background = TierDecorator("background")
