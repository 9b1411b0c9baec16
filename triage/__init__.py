"""Triage: tiered Dramatiq workers on Redis — priority, fairness, liveness, dead letters.

The public API. Importing `triage` has no side effect: nothing is installed and nothing
connects until `install()` (or the first tier decorator, which installs the defaults).

    import triage
    from triage import critical

    triage.install(config=my_config, middleware=my_stack)  # optional: defaults otherwise

    @critical
    def reserve_stock(order_id: str, sku: str, qty: int) -> None: ...

    @default(circuit="telegram")            # an open breaker defers the message, no retry used
    def notify(chat_id: int, text: str) -> None:
        with triage.breaker("bank"): ...    # or around one call; CircuitOpen when open

`__version__` is the distribution's version (`dramatiq-triage` on the package index), defined
here and nowhere else: the build reads it from this file, `triage --version` prints it.
"""

from __future__ import annotations

__version__ = "0.2.0"

from collections.abc import Iterable
from typing import Any

from dramatiq.errors import BrokerConnectionError
from dramatiq.message import Message

from triage.breakers import BreakerGuard, breaker
from triage.broker.dedup import DuplicateMessage
from triage.broker.delivery import delivery_count
from triage.broker.errors import Backpressure, ReplicationError
from triage.broker.priority import InvalidPriority
from triage.decorators import TierDecorator, background, critical, default
from triage.discovery import discover
from triage.middleware import (
    CircuitOpen,
    Defer,
    InvalidTenant,
    PayloadTooLarge,
    PayloadTypeError,
    RoutingError,
    UnknownBreaker,
)
from triage.runtime import Runtime, current, install
from triage.settings import ConfigError


def enqueue_batch(messages: Iterable[Message[Any] | tuple[Message[Any], int | None]]) -> list[Message[Any]]:
    """Enqueue messages of any actors and queues at once: all of them, or none if one is invalid.

    Items are messages (`actor.message(...)`, `actor.message_with_options(..., priority=8)`)
    or `(message, delay_ms)` pairs.
    """
    return current().broker.enqueue_batch(messages)


__all__ = [
    "Backpressure",
    "BreakerGuard",
    "BrokerConnectionError",
    "CircuitOpen",
    "ConfigError",
    "Defer",
    "DuplicateMessage",
    "InvalidPriority",
    "InvalidTenant",
    "PayloadTooLarge",
    "PayloadTypeError",
    "ReplicationError",
    "RoutingError",
    "Runtime",
    "TierDecorator",
    "UnknownBreaker",
    "background",
    "breaker",
    "critical",
    "current",
    "default",
    "delivery_count",
    "discover",
    "enqueue_batch",
    "install",
]
