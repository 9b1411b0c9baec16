"""Broker errors as producers and Dramatiq's worker see them."""

from __future__ import annotations

from dramatiq.errors import ConnectionClosed, QueueJoinTimeout


def connection_lost(exc: Exception) -> ConnectionClosed:
    """The Dramatiq error for a lost Redis connection: workers retry, producers see it raised."""
    return ConnectionClosed(exc)  # type: ignore[no-untyped-call]


def join_timeout(queue_name: str) -> QueueJoinTimeout:
    return QueueJoinTimeout(queue_name)  # type: ignore[no-untyped-call]
