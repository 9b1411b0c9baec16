"""Operator actions from Redis alone: list queues and their counters, pause, resume, and the
dead letters (`Admin.dead_letters`, see `dlq.py`).

Guarantees:
- Needs only the settings from the environment (`REDIS_URL`, `TRIAGE_NAMESPACE`): no
  application module is imported, so these work during an incident in which an actor
  module fails to import.
- The queues are the three tiers, the queues of `TRIAGE_QUEUES`, and every queue that a
  worker or a producer recorded in Redis (`{ns}:queues`), each with its tier.
- Reads are one pipelined round trip; a Redis failure raises `redis.RedisError`.
"""

from __future__ import annotations

from triage.broker.encoder import encoder_for
from triage.broker.redis_broker import TriageBroker
from triage.settings import TIER_NAMES, Settings, load_settings, shard_counter
from triage.stats import QueueStats, tiered_stats

from .dlq import DeadLetters


class UnknownQueue(LookupError):
    """A queue that no tier, setting, worker or producer has declared."""

    def __init__(self, queue: str, known: list[str]) -> None:
        super().__init__(f"unknown queue {queue!r}; known queues: {', '.join(known)}")
        self.queue, self.known = queue, known


class Admin:
    """What an operator does to the queues, from Redis alone.

    Parameters:
      settings: the environment's settings (loaded when not given).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.broker = TriageBroker(
            client=self.settings.redis_client(),
            namespace=self.settings.namespace,
            middleware=[],
            encoder=encoder_for(self.settings.encoder),
            shards=shard_counter(self.settings),
        )
        self.dead_letters = DeadLetters(self.broker, self.queues)

    def queues(self) -> dict[str, str]:
        """Every known queue and its tier: the tiers first, then the others by name."""
        known: dict[str, str] = dict(self.settings.queue_tiers())
        known.update(self.broker.registry.known_queues())
        tiers = {name: name for name in TIER_NAMES}
        return tiers | {q: known[q] for q in sorted(known) if q not in tiers}

    def stats(self) -> dict[str, QueueStats]:
        return tiered_stats(self.broker, self.queues())

    def pause(self, queue: str) -> None:
        """Stop delivering the queue's messages (persisted in Redis); producers can still enqueue."""
        self.broker.pause(self.known(queue))

    def resume(self, queue: str) -> None:
        self.broker.resume(self.known(queue))

    def known(self, queue: str) -> str:
        """`queue` if it is known, else UnknownQueue."""
        queues = self.queues()
        if queue not in queues:
            raise UnknownQueue(queue, list(queues))
        return queue

    def close(self) -> None:
        self.broker.close()
