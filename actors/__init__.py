"""The actors package: importing it builds the broker and declares every actor.

Guarantees:
- `import actors` validates the settings, installs the broker (see `config/broker.py`)
  and imports every module under `actors/` whose name does not start with `_`, in
  name order: adding a module is enough to deploy its actors, there is no list.
- `from actors import critical, default, background` gives the tier decorators.
- `dramatiq actors --queues critical` works from the repository root.
"""

from __future__ import annotations

import importlib
import pkgutil

from config.broker import install

runtime = install()

from ._decorators import background, critical, default  # noqa: E402  (needs the installed broker)


def _discover() -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


modules = _discover()

__all__ = ["background", "critical", "default", "modules", "runtime"]
