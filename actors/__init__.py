"""The service's actors: importing this package installs Triage and declares every actor.

Guarantees:
- `import actors` installs Triage with the service's `config` and `middleware` (settings
  validated first: a bad one stops the process naming the variable), then imports every
  module under `actors/` whose name does not start with `_`, in name order: adding a
  module is enough to deploy its actors, there is no list.
- `from actors import critical, default, background, enqueue_batch` keeps working; the
  same names come from `triage`.
- `dramatiq actors --queues critical` works from the repository root.
- With `TRIAGE_DEMO=1` (set by `triage run`), the demo's own actors are declared too.
"""

from __future__ import annotations

import config
import middleware
from triage import background, critical, default, discover, enqueue_batch, install
from triage.admin.demo import declare_demo_actors

runtime = install(config=config, middleware=middleware.STACK)
modules = discover(__name__)
if runtime.settings.demo:  # `triage run` sets TRIAGE_DEMO=1: the workers run the demo's actors too
    declare_demo_actors()

__all__ = ["background", "critical", "default", "enqueue_batch", "modules", "runtime"]
