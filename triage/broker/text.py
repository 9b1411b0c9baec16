"""Redis replies as text.

Guarantees: `as_text` gives a `str` for a reply that redis-py returns as bytes (the clients are
not built with `decode_responses`) and leaves any other value as its `str`.
"""

from __future__ import annotations

from typing import Any


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
