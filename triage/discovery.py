"""Actor discovery: importing a package's modules is enough to declare their actors.

Guarantees: `discover("actors")` imports every module directly under the package whose
name does not start with `_`, in name order, once (Python caches imports), and returns
their names; an import error propagates with the module's name in its traceback.
"""

from __future__ import annotations

import importlib
import pkgutil


def discover(package: str) -> list[str]:
    """Import the public modules of `package` (a dotted name), in name order; return their names."""
    module = importlib.import_module(package)
    path = getattr(module, "__path__", None)
    if path is None:
        raise ValueError(f"discover({package!r}): {package} is a module, not a package")
    names = sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
