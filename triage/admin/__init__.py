"""The operator surface: `Admin` (Python API: queues, stats, pause, resume, dead letters),
the `triage` CLI, the local runner, the demo.

Guarantees: `Admin` works from Redis and the environment alone; importing this package
imports no application code and connects to nothing.
"""

from triage.stats import QueueStats

from .dlq import DeadLetters
from .dlq_model import ActionResult, DeadLetter, Filter, Group
from .ops import Admin, UnknownQueue

__all__ = ["ActionResult", "Admin", "DeadLetter", "DeadLetters", "Filter", "Group", "QueueStats", "UnknownQueue"]
