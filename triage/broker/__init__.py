"""The Triage Redis broker: priority levels, tenant round-robin, liveness, dead letters.

Guarantees: this package knows nothing of tiers, settings or middleware policies; it is
configured entirely through `TriageBroker`'s parameters. Messages are encoded as msgpack
(default) or JSON, never pickled. `triage.runtime` is the one place that builds it.
"""

from .errors import ReplicationError
from .inspection import QueueCounters, queue_stats
from .priority import MAX_PRIORITY, MIN_PRIORITY, InvalidPriority, check_priority
from .redis_broker import TriageBroker

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "InvalidPriority",
    "QueueCounters",
    "ReplicationError",
    "TriageBroker",
    "check_priority",
    "queue_stats",
]
