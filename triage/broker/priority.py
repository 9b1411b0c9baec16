"""Message priority: the one definition of its range.

Guarantees: a priority is an integer from `MIN_PRIORITY` (1) to `MAX_PRIORITY` (10),
10 the most urgent; each value is one level of a queue (`keys.LEVELS`), and the Lua
scripts get the top level from here (`scripts.py`), so no other place spells the range.
"""

from __future__ import annotations

from typing import Any

from dramatiq.middleware import MiddlewareError

MIN_PRIORITY = 1
MAX_PRIORITY = 10
DEFAULT_PRIORITY = 5  # a message that reaches the broker without one (no placement middleware)


class InvalidPriority(MiddlewareError, ValueError):
    """A message priority that is not an integer from 1 to 10. (A MiddlewareError, so that
    Dramatiq lets it out of `before_enqueue` hooks to the producer.)"""


def check_priority(value: Any, *, actor_name: str) -> int:
    """Return `value` if it is a valid message priority (it indexes the queue's levels), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidPriority(
            f"actor {actor_name!r}: priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY} "
            f"({MAX_PRIORITY} most urgent), got {value!r}"
        )
    return value


def clamp_priority(value: int) -> int:
    """The nearest valid priority (for hooks that compute one)."""
    return max(MIN_PRIORITY, min(MAX_PRIORITY, value))
