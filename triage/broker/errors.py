"""Broker errors as producers and Dramatiq's worker see them."""

from __future__ import annotations

import redis
from dramatiq.errors import BrokerError, ConnectionClosed, QueueJoinTimeout
from redis.exceptions import AskError, ClusterError, SlotNotCoveredError, TryAgainError

# What redis-py raises when Redis cannot be reached or does not answer in time, and, on a
# cluster, while a slot has no reachable primary or is moving (a failover, a resharding; the
# cluster client retries these first): the command did not run, or may not have.
CLUSTER_TRANSIENT = (ClusterError, TryAgainError, AskError, SlotNotCoveredError)
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, *CLUSTER_TRANSIENT)


def connection_lost(exc: Exception) -> ConnectionClosed:
    """The Dramatiq error for a lost Redis connection: workers retry, producers see it raised."""
    return ConnectionClosed(exc)  # type: ignore[no-untyped-call]


def join_timeout(queue_name: str) -> QueueJoinTimeout:
    return QueueJoinTimeout(queue_name)  # type: ignore[no-untyped-call]


class Backpressure(BrokerError):
    """A send refused by admission: the tenant has `max_pending` messages pending on the queue
    already. Nothing of the send (nor of its batch) was stored; try again after `retry_after`
    seconds (an HTTP app answers 429 with Retry-After). On a Redis Cluster, a batch spanning
    slots may have been stored in part: see `stored`."""

    def __init__(self, tenant: str, queue: str, pending: int, max_pending: int, retry_after: float) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            f"tenant {tenant!r} has {pending} message(s) pending on queue {queue!r} (max_pending {max_pending}): "
            f"send refused, nothing stored; retry after {retry_after:.0f} s"
        )
        self.tenant, self.queue, self.pending, self.max_pending = tenant, queue, pending, max_pending
        self.retry_after = retry_after
        # On a Redis Cluster, a batch over several slots is stored slot by slot: the message ids
        # that earlier slots stored before this refusal (sending the batch again stores the rest).
        self.stored: list[str] = []


class ReplicationError(BrokerError):
    """An enqueue reached the primary but fewer replicas than required confirmed it in time."""

    def __init__(self, messages: int, confirmed: int, required: int, timeout_ms: int) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            f"enqueue of {messages} message(s) confirmed by {confirmed} of {required} replica(s) within "
            f"{timeout_ms} ms (TRIAGE_MIN_REPLICAS): it is on the primary only and a failover may lose it; "
            "sending it again may run it twice"
        )
        self.messages, self.confirmed, self.required = messages, confirmed, required
