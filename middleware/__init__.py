"""Triage's middleware: one policy per module, assembled in `config/broker.py`."""

from .payload_guard import PayloadGuard, PayloadTooLarge, PayloadTypeError
from .routing import InvalidPriority, Routing, RoutingError

__all__ = [
    "InvalidPriority",
    "PayloadGuard",
    "PayloadTooLarge",
    "PayloadTypeError",
    "Routing",
    "RoutingError",
]
