"""The operator surface: `Admin` (Python API), the `triage` CLI, the local runner, the demo.

Guarantees: `Admin` works from Redis and the environment alone; importing this package
imports no application code and connects to nothing.
"""

from triage.stats import QueueStats

from .ops import Admin, UnknownQueue

__all__ = ["Admin", "QueueStats", "UnknownQueue"]
