"""Redis key names of the Triage broker.

Guarantees: every key of a queue carries the queue's hash tag `{namespace:queue}`, so
one queue's keys live in one Redis Cluster slot and a script over one queue is a legal
cluster script. `QueueKeys.block()` is the block of `BLOCK_SIZE` keys of `lua/_fifo.lua`, in its
order.

A sharded queue (`shards=N`, N > 1) is N queues' worth of keys, each with a hash tag of its own
(`shard_tags`): shard i's tag is `{namespace:queue~i.j}` with the first j whose slot falls in the
middle of the i-th N-th of the slot space, so N shards land on N different masters of a cluster
whose slots are split evenly (as `redis-cli --cluster create` splits them). The tags are a
function of the names and N alone: every process finds the same ones.
"""

from __future__ import annotations

from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .priority import MAX_PRIORITY, MIN_PRIORITY

LEVELS = range(MIN_PRIORITY, MAX_PRIORITY + 1)  # one FIFO/round-robin level per message priority
BLOCK_SIZE = 9 + len(LEVELS)  # msgs .. wake, heads, since, then one rr key per level (`lua/_fifo.lua`)


@lru_cache(maxsize=1024)
def shard_tags(namespace: str, queue: str, shards: int) -> tuple[str, ...]:
    """The hash tags of a queue's shards: the queue's own tag when it has one shard."""
    if shards <= 1:
        return (f"{{{namespace}:{queue}}}",)
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    tags = []
    for shard in range(shards):
        middle, spread = (shard + 0.5) * width, max(1.0, width / 8)
        j = 0
        while abs(key_slot(f"{namespace}:{queue}~{shard}.{j}".encode()) - middle) > spread:
            j += 1
        tags.append(f"{{{namespace}:{queue}~{shard}.{j}}}")
    return tuple(tags)


class QueueKeys:
    """The key names of one queue (or of one shard of it: `tag`), computed once."""

    def __init__(self, namespace: str, queue: str, tag: str | None = None) -> None:
        self.namespace, self.queue = namespace, queue
        self.tag = tag = tag or f"{{{namespace}:{queue}}}"
        self.msgs = f"{tag}:msgs"
        self.items = f"{tag}:items"
        self.state = f"{tag}:state"
        self.delayed = f"{tag}:delayed"
        self.stats = f"{tag}:stats"
        self.paused = f"{tag}:paused"
        self.wake = f"{tag}:wake"
        self.heads = f"{tag}:heads"
        self.since = f"{tag}:since"
        self.dead = f"{tag}:dead"
        self.dead_msgs = f"{tag}:dead.msgs"
        self.dead_info = f"{tag}:dead.info"
        self.dead_idx = f"{tag}:dead.idx"
        self.retrying = f"{tag}:retrying"
        self.deliveries = f"{tag}:deliveries"
        self.tenants = f"{tag}:tenants"
        self.parked = f"{tag}:parked"
        self.tenants_idle = f"{tag}:tenants.idle"
        self.limits = f"{tag}:limits"
        self.dedup = f"{tag}:dedup"
        self.dedup_exp = f"{tag}:dedup.exp"
        self.levels = [f"{tag}:rr:{level}" for level in LEVELS]
        self._block = [
            self.msgs,
            self.items,
            self.state,
            self.delayed,
            self.stats,
            self.paused,
            self.wake,
            self.heads,
            self.since,
            *self.levels,
        ]
        assert len(self._block) == BLOCK_SIZE

    def minute(self, minute: int) -> str:
        """The activity bucket of one unix minute (`hourly.py`)."""
        return f"{self.tag}:minute:{minute}"

    def acks(self, consumer_id: str) -> str:
        return f"{self.tag}:acks:{consumer_id}"

    def block(self) -> list[str]:
        """The keys every script takes, in `_fifo.lua` order."""
        return list(self._block)

    def enqueue_keys(self) -> list[str]:
        return [*self._block, self.deliveries, self.tenants, self.limits, *self.dedup_keys(), self.tenants_idle]

    def dedup_keys(self) -> list[str]:
        """The deduplication keys held and their expiry (`lua/_dedup.lua`)."""
        return [self.dedup, self.dedup_exp]

    def dead_keys(self) -> list[str]:
        """The dead letters: ids by time, bodies, records, and the lexicographic index."""
        return [self.dead, self.dead_msgs, self.dead_info, self.dead_idx]

    def tenant_keys(self) -> list[str]:
        """The per-tenant limits' bookkeeping (`lua/_tenants.lua`): in flight and buckets, parked tenants."""
        return [self.tenants, self.parked]

    def fetch_keys(self, consumer_id: str) -> list[str]:
        return [
            *self._block,
            self.acks(consumer_id),
            self.deliveries,
            self.retrying,
            *self.tenant_keys(),
            self.limits,
            self.tenants_idle,
        ]

    def requeue_keys(self, consumer_id: str) -> list[str]:
        return [*self._block, self.acks(consumer_id), self.deliveries, *self.tenant_keys()]

    def settle_keys(self, consumer_id: str) -> list[str]:
        return [
            self.msgs,
            self.stats,
            self.acks(consumer_id),
            self.deliveries,
            *self.dead_keys(),
            *self.tenant_keys(),
            self.wake,
            *self.dedup_keys(),
            self.tenants_idle,
        ]

    def retry_keys(self, source: QueueKeys, consumer_id: str) -> list[str]:
        """Keys of retry.lua: this queue (where the message goes) then the one it was fetched from."""
        return [
            *self._block,
            self.deliveries,
            self.retrying,
            source.msgs,
            source.stats,
            source.acks(consumer_id),
            source.deliveries,
            *source.tenant_keys(),
            source.wake,
            self.tenants,
            source.tenants_idle,
        ]

    def reclaim_keys(self, dead_worker_id: str) -> list[str]:
        return [
            *self._block,
            self.acks(dead_worker_id),
            self.deliveries,
            *self.dead_keys(),
            *self.tenant_keys(),
            *self.dedup_keys(),
            self.tenants_idle,
        ]

    def dedup_script_keys(self) -> list[str]:
        """Keys of dedup.lua: the stored messages' references to their keys, and the keys."""
        return [self.deliveries, *self.dedup_keys()]

    def dead_letter_keys(self) -> list[str]:
        """Keys of the dead-letter operations (dlq.lua): the block, deliveries, the dead letters, tenants."""
        return [*self._block, self.deliveries, *self.dead_keys(), self.tenants]

    def message_keys(self) -> list[str]:
        """Every key that holds messages (what a flush drops)."""
        return [
            self.msgs,
            self.items,
            self.state,
            self.delayed,
            self.retrying,
            self.deliveries,
            self.parked,
            self.tenants,
            self.tenants_idle,
            self.heads,
            self.since,
            *self.dedup_keys(),
            *self.levels,
        ]
