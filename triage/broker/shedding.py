"""Load shedding: while the watched queues' work waits too long, new work for the shed queues
is held back (delayed), so that it does not compete with the late work for workers, Redis and
the services both use.

Guarantees:
- Late means: a watched queue that is not paused has a message that a consumer could take
  now and that has waited longer than `late_after_ms`, by Redis's clock (the queue's heads,
  `lua/_fifo.lua`). A message that is delayed, or held back by its tenant's limits, is not
  waiting for a worker and does not count; nor does a paused queue's backlog.
- While late, a new message for a shed queue is stored with at least `hold_ms` of delay:
  never refused, never dropped, its priority and tenant kept. Retries, deferrals and moves
  are not new work and are never held; a message sent with a longer delay keeps it.
- Cost: one round trip per process every `check_every_s` (1 s), whatever the number of
  sends; a send in between uses the last answer. When Redis cannot be read the answer is
  "not late" (nothing is held; the send itself reports the error).
- Each process logs when it starts holding work back (warning, with the queue and its wait)
  and when it stops (info); the messages held are counted per queue (`shed_total`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import redis

from .inspection import queue_stats
from .keys import QueueKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shedding:
    """What to watch and what to hold back, and for how long."""

    watched: Callable[[], Collection[str]]  # the queues whose wait is watched (the critical tier's)
    sheds: Callable[[str], bool]  # whether new work for a queue is held back while they are late
    late_after_ms: int  # a wait longer than this is late (the critical tier's SLA)
    hold_ms: int  # how long new work for a shed queue is delayed while late


class LoadShedder:
    """Answers, for each new message, how long to hold it back (0: not at all)."""

    def __init__(
        self,
        client: redis.Redis,
        keys_of: Callable[[str], list[QueueKeys]],
        policy: Shedding | None,
        *,
        check_every_s: float = 1.0,
    ) -> None:
        self.client, self.keys_of, self.policy = client, keys_of, policy
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._checked_at = -check_every_s  # monotonic seconds; the first send checks
        self._late: tuple[str, float] | None = None  # (queue, its oldest wait in seconds) while late

    def hold_ms(self, queue_name: str) -> int:
        policy = self.policy
        if policy is None or not policy.sheds(queue_name):
            return 0
        return policy.hold_ms if self.late() is not None else 0

    def late(self) -> tuple[str, float] | None:
        """The watched queue whose wait is longest and late, and that wait (None: none is late)."""
        if time.monotonic() - self._checked_at >= self.check_every_s and self._lock.acquire(blocking=False):
            try:
                self._update(self._check())
            finally:
                self._checked_at = time.monotonic()
                self._lock.release()
        return self._late

    def _check(self) -> tuple[str, float] | None:
        assert self.policy is not None
        watched = list(self.policy.watched())
        try:
            stats = queue_stats(self.client, self.keys_of, watched)
        except (redis.RedisError, OSError):
            return None
        waits = [(s["oldest_waiting_seconds"], q) for q, s in stats.items() if not s["paused"]]
        wait, queue = max(waits, default=(0.0, ""))
        return (queue, wait) if wait * 1000 > self.policy.late_after_ms else None

    def _update(self, late: tuple[str, float] | None) -> None:
        assert self.policy is not None
        limit_s = self.policy.late_after_ms / 1000
        if late is not None and self._late is None:
            logger.warning(
                "Load shedding on: the oldest message of queue %r has waited %.1f s (over %.1f s); "
                "new messages for the shed queues are delayed %.0f s.",
                late[0],
                late[1],
                limit_s,
                self.policy.hold_ms / 1000,
            )
        elif late is None and self._late is not None:
            logger.info("Load shedding off: no watched queue's oldest message has waited %.1f s.", limit_s)
        self._late = late
