"""The error of an actor declared with an option a policy cannot accept.

Guarantees: it is a `MiddlewareError`, so the broker's dispatch lets it through and the
declaration fails (rather than logging it and declaring a broken actor); it is also a
`ValueError` and a `TypeError`, as a bad argument is.
"""

from __future__ import annotations

from dramatiq.middleware import MiddlewareError


class InvalidActorOption(MiddlewareError, ValueError, TypeError):
    """An actor option that a policy refuses at declaration; the message names the actor."""
