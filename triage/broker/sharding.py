"""Sharded queues: which shards a queue has, where a new message goes, and the startup check.

Guarantees:
- `shards(queue)` is the same list in every process that has the same `shards` setting: the
  N shards producers write to (`keys.shard_tags`), then, for a sharded queue, the queue's own
  keys, where its messages were before it was sharded (served until empty; new messages never
  go there, a retry of one of its messages stays there). The shards' tags depend on N: a
  queue already sharded whose N changes leaves its old shards unserved (drain it first).
- A new message goes to its tenant's shard (a hash of the tenant, so a tenant's FIFO and its
  limits live in one shard), else its dedup key's (so a key is held in one place), else the
  next shard in turn (per process and queue). So on a sharded queue a dedup key is unique per
  tenant: two tenants' messages with one key may both be stored.
- `check_slots(queue)` refuses (`CrossSlotError`) a queue any of whose scripts would take keys
  of two cluster slots.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable

from .keys import QueueKeys, shard_tags
from .slots import check_slots


class Sharding:
    """The shards of a broker's queues (a mixin of `TriageBroker`)."""

    namespace: str
    broker_id: str
    shard_count: Callable[[str], int]
    _shards: dict[str, list[QueueKeys]]  # set by the broker: {}
    _turns: dict[str, itertools.count[int]]

    def keys(self, queue_name: str) -> QueueKeys:
        raise NotImplementedError

    def shards(self, queue_name: str) -> list[QueueKeys]:
        """The keys of every shard of the queue that consumers serve and operators see: the N
        shards producers write to, then, for a sharded queue, the queue's own keys (where its
        messages were before it was sharded: served until empty, never given new messages)."""
        found = self._shards.get(queue_name)
        if found is None:
            count = max(1, int(self.shard_count(queue_name)))
            if count == 1:
                found = [self.keys(queue_name)]
            else:
                tags = shard_tags(self.namespace, queue_name, count)
                found = [QueueKeys(self.namespace, queue_name, tag) for tag in tags] + [self.keys(queue_name)]
            self._shards[queue_name] = found
        return found

    def check_slots(self, queue_name: str) -> None:
        """Refuse (`CrossSlotError`) a queue any of whose scripts would take keys of two slots."""
        lists = []
        for keys in self.shards(queue_name):
            lists += [
                (f"queue {queue_name!r} ({keys.tag}), enqueue", keys.enqueue_keys()),
                (f"queue {queue_name!r} ({keys.tag}), fetch", keys.fetch_keys(self.broker_id)),
                (f"queue {queue_name!r} ({keys.tag}), settle", keys.settle_keys(self.broker_id)),
                (f"queue {queue_name!r} ({keys.tag}), retry", keys.retry_keys(keys, self.broker_id)),
                (f"queue {queue_name!r} ({keys.tag}), reclaim", keys.reclaim_keys(self.broker_id)),
                (f"queue {queue_name!r} ({keys.tag}), dead letters", keys.dead_letter_keys()),
            ]
        check_slots(lists)

    def _shard_of(self, queue_name: str, tenant: str, dedup_key: str) -> int:
        """Where a new message goes: its tenant's shard, else its dedup key's, else the next in turn."""
        count = len(self.shards(queue_name))
        if count == 1:
            return 0
        count -= 1  # the queue's own keys are served, not written
        if tenant or dedup_key:
            return zlib.crc32((tenant or dedup_key).encode()) % count
        turn = self._turns.get(queue_name) or self._turns.setdefault(queue_name, itertools.count())
        return next(turn) % count
