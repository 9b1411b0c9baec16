"""A queue's operations: pause and resume, counts, flush, join, dead-letter retention.

Guarantees: a pause is a key in Redis (it outlives the process that set it and is seen by every
consumer of the queue); an operator's pause is never shortened or lifted by a breaker's
(`pause_for` / `resume_if_paused_by` compare owners); resuming wakes the queue's idle
consumers at once; counts are one consistent snapshot (`inspection.queue_stats`). Each applies
to every shard of a sharded queue, one shard (one slot) at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script

from .clock import now_ms
from .inspection import queue_stats
from .keys import QueueKeys
from .slots import grouped


class QueueOperations:
    """Operator actions on a queue, for a broker with a Redis `client`, `keys` and `scripts`."""

    client: redis.Redis
    scripts: dict[str, Script]
    queues: set[str]
    dead_letter_limits: Callable[[str], tuple[int, int]]

    def keys(self, queue_name: str) -> QueueKeys:
        raise NotImplementedError

    def shards(self, queue_name: str) -> list[QueueKeys]:
        raise NotImplementedError

    def pause_for(self, queue_name: str, *, ms: int, owner: str) -> bool:
        """Pause the queue for `ms` on behalf of `owner` (a breaker), unless it is paused already
        (an operator's pause is never shortened). The pause ends by itself after `ms`."""
        paused = [
            bool(self.client.set(keys.paused, owner, px=max(1, int(ms)), nx=True)) for keys in self.shards(queue_name)
        ]
        return paused[0]

    def resume_if_paused_by(self, queue_name: str, owner: str) -> bool:
        """Resume the queue if `owner` paused it (an operator's pause stays)."""
        resumed = [
            self.scripts["unpause"](keys=[keys.paused, keys.wake], args=[owner]) for keys in self.shards(queue_name)
        ]
        return bool(resumed[0])

    def trim_dead_letters(self, queue_name: str) -> int:
        """Apply the queue's dead-letter retention now (an idle queue is trimmed too); entries dropped."""
        args: list[Any] = ["trim", now_ms(), *self.dead_letter_limits(queue_name)]
        return sum(
            int(self.scripts["dlq"](keys=keys.dead_letter_keys(), args=args)) for keys in self.shards(queue_name)
        )

    def pause(self, queue_name: str) -> None:
        """Stop handing out messages of the queue (persisted in Redis); enqueues still work."""
        for keys in self.shards(queue_name):
            self.client.set(keys.paused, str(now_ms()))

    def resume(self, queue_name: str) -> None:
        """Hand out messages again and wake the queue's idle consumers at once."""

        def commands(keys: QueueKeys) -> Callable[[Any], None]:
            def queue_commands(pipe: Any) -> None:
                pipe.delete(keys.paused)
                pipe.rpush(keys.wake, *(["1"] * 8))

            return queue_commands

        groups = {keys.tag: (keys.tag, commands(keys)) for keys in self.shards(queue_name)}
        grouped(self.client, groups, transaction=True)

    def is_paused(self, queue_name: str) -> bool:
        return any(self.client.exists(keys.paused) for keys in self.shards(queue_name))

    def counts(self, queue_name: str) -> tuple[int, int, int]:
        """(queued, delayed, running) of a queue; delayed includes the retries waiting for their backoff."""
        stats = queue_stats(self.client, self.shards, [queue_name])[queue_name]
        return stats["queued"], stats["delayed"] + stats["retrying"], stats["running"]

    def flush(self, queue_name: str) -> None:
        """Drop every queued and delayed message of the queue (in-flight ones finish)."""
        for keys in self.shards(queue_name):
            self.client.delete(*keys.message_keys())

    def flush_all(self) -> None:
        for queue_name in self.queues:
            self.flush(queue_name)
