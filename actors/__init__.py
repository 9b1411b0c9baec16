"""The actors package: importing it builds the broker and declares every actor.

Guarantees:
- `import actors` validates the settings, installs the broker (see `config/broker.py`)
  and imports every module under `actors/` whose name does not start with `_`, in
  name order: adding a module is enough to deploy its actors, there is no list.
- `from actors import critical, default, background` gives the tier decorators;
  `from actors import enqueue_batch` enqueues many messages in one all-or-nothing call.
- `dramatiq actors --queues critical` works from the repository root.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

from dramatiq.message import Message

from config.broker import install

runtime = install()

from ._decorators import background, critical, default  # noqa: E402  (needs the installed broker)


def enqueue_batch(messages: Iterable[Message[Any] | tuple[Message[Any], int | None]]) -> list[Message[Any]]:
    """Enqueue messages of any actors and queues at once: all of them, or none if one is invalid.

    Items are messages (`actor.message(...)`, `actor.message_with_options(..., priority=8)`)
    or `(message, delay_ms)` pairs.
    """
    return runtime.broker.enqueue_batch(messages)


def _discover() -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


modules = _discover()

__all__ = ["background", "critical", "default", "enqueue_batch", "modules", "runtime"]
