"""A queue's operations: pause and resume, counts, flush, join, dead-letter retention.

Guarantees: a pause is a key in Redis (it outlives the process that set it and is seen by every
consumer of the queue); an operator's pause is never shortened or lifted by a breaker's
(`pause_for` / `resume_if_paused_by` compare owners); resuming wakes the queue's idle
consumers at once; counts are one consistent snapshot (`inspection.queue_stats`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script

from .clock import now_ms
from .inspection import queue_stats
from .keys import QueueKeys


class QueueOperations:
    """Operator actions on a queue, for a broker with a Redis `client`, `keys` and `scripts`."""

    client: redis.Redis
    scripts: dict[str, Script]
    queues: set[str]
    dead_letter_limits: Callable[[str], tuple[int, int]]

    def keys(self, queue_name: str) -> QueueKeys:
        raise NotImplementedError

    def pause_for(self, queue_name: str, *, ms: int, owner: str) -> bool:
        """Pause the queue for `ms` on behalf of `owner` (a breaker), unless it is paused already
        (an operator's pause is never shortened). The pause ends by itself after `ms`."""
        return bool(self.client.set(self.keys(queue_name).paused, owner, px=max(1, int(ms)), nx=True))

    def resume_if_paused_by(self, queue_name: str, owner: str) -> bool:
        """Resume the queue if `owner` paused it (an operator's pause stays)."""
        keys = self.keys(queue_name)
        resumed: int = self.scripts["unpause"](keys=[keys.paused, keys.wake], args=[owner])
        return bool(resumed)

    def trim_dead_letters(self, queue_name: str) -> int:
        """Apply the queue's dead-letter retention now (an idle queue is trimmed too); entries dropped."""
        args: list[Any] = ["trim", now_ms(), *self.dead_letter_limits(queue_name)]
        dropped: int = self.scripts["dlq"](keys=self.keys(queue_name).dead_letter_keys(), args=args)
        return dropped

    def pause(self, queue_name: str) -> None:
        """Stop handing out messages of the queue (persisted in Redis); enqueues still work."""
        self.client.set(self.keys(queue_name).paused, str(now_ms()))

    def resume(self, queue_name: str) -> None:
        """Hand out messages again and wake the queue's idle consumers at once."""
        keys = self.keys(queue_name)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(keys.paused)
        pipe.rpush(keys.wake, *(["1"] * 8))
        pipe.execute()

    def is_paused(self, queue_name: str) -> bool:
        return bool(self.client.exists(self.keys(queue_name).paused))

    def counts(self, queue_name: str) -> tuple[int, int, int]:
        """(queued, delayed, running) of a queue; delayed includes the retries waiting for their backoff."""
        stats = queue_stats(self.client, self.keys, [queue_name])[queue_name]
        return stats["queued"], stats["delayed"] + stats["retrying"], stats["running"]

    def flush(self, queue_name: str) -> None:
        """Drop every queued and delayed message of the queue (in-flight ones finish)."""
        self.client.delete(*self.keys(queue_name).message_keys())

    def flush_all(self) -> None:
        for queue_name in self.queues:
            self.flush(queue_name)
