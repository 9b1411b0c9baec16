"""Triage's middleware: one policy per module, assembled in `config/broker.py`."""

from broker.errors import InvalidPriority

from .payload_guard import PayloadGuard, PayloadTooLarge, PayloadTypeError
from .placement import InvalidTenant, Placement
from .routing import Routing, RoutingError

__all__ = [
    "InvalidPriority",
    "InvalidTenant",
    "PayloadGuard",
    "PayloadTooLarge",
    "PayloadTypeError",
    "Placement",
    "Routing",
    "RoutingError",
]
