"""Routing rules: which tier and queue a plain Dramatiq actor belongs to, by its name.

Guarantees:
- Rules are ordered glob patterns (`fnmatch` syntax, case-sensitive) over the actor
  name; the first match wins; an actor no rule matches goes to the `default` tier.
  There are no built-in rules: a service declares its own (`config.ROUTES`, or
  `TRIAGE_ROUTES`).
- A rule's target is a tier or a declared queue; an unknown target is a
  configuration error at start, not a message stranded on a queue nobody consumes.
- Rules are compiled once; routing an actor is one regex match per rule, done once
  when the actor is declared (microseconds), never per message.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .settings import ConfigError
from .tiers import Taxonomy, Tier


@dataclass(frozen=True)
class Route:
    queue_name: str
    tier: Tier


class Router:
    """Ordered glob rules over actor names, checked against the taxonomy.

    Parameters:
      rules: (pattern, target) pairs, first match wins; a target is a tier or a queue the
        taxonomy declares, else `ConfigError`.
      taxonomy: the tiers and queues of this process.
    """

    def __init__(self, rules: Iterable[tuple[str, str]], taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.rules: list[tuple[str, re.Pattern[str], str]] = []
        for pattern, target in rules:
            if taxonomy.tier_of_queue(target) is None:
                known = ", ".join(sorted(taxonomy.queues))
                raise ConfigError(
                    f"invalid configuration:\n  TRIAGE_ROUTES (or config.ROUTES): rule {pattern!r} targets {target!r}, "
                    f"which is neither a tier nor a declared queue ({known})"
                )
            self.rules.append((pattern, re.compile(fnmatch.translate(pattern)), target))

    def route(self, actor_name: str) -> Route:
        """The queue and tier for an actor name; unmatched names go to `default`."""
        for _pattern, regex, target in self.rules:
            if regex.match(actor_name):
                return self._route_to(target)
        return self._route_to("default")

    def _route_to(self, queue_name: str) -> Route:
        tier = self.taxonomy.tier_of_queue(queue_name)
        assert tier is not None  # targets are checked in __init__
        return Route(queue_name=queue_name, tier=tier)
