"""Broker errors as producers and Dramatiq's worker see them."""

from __future__ import annotations

import redis
from dramatiq.errors import BrokerError, ConnectionClosed, QueueJoinTimeout

# What redis-py raises when Redis cannot be reached or does not answer in time.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def connection_lost(exc: Exception) -> ConnectionClosed:
    """The Dramatiq error for a lost Redis connection: workers retry, producers see it raised."""
    return ConnectionClosed(exc)  # type: ignore[no-untyped-call]


def join_timeout(queue_name: str) -> QueueJoinTimeout:
    return QueueJoinTimeout(queue_name)  # type: ignore[no-untyped-call]


class ReplicationError(BrokerError):
    """An enqueue reached the primary but fewer replicas than required confirmed it in time."""

    def __init__(self, messages: int, confirmed: int, required: int, timeout_ms: int) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            f"enqueue of {messages} message(s) confirmed by {confirmed} of {required} replica(s) within "
            f"{timeout_ms} ms (TRIAGE_MIN_REPLICAS): it is on the primary only and a failover may lose it; "
            "sending it again may run it twice"
        )
        self.messages, self.confirmed, self.required = messages, confirmed, required
