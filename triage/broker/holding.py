"""What this worker process holds of one queue, and giving back what Redis records but it never got.

A fetch records each message it hands out in the queue's in-flight record for this worker
(`{ns:Q}:acks:<worker id>`) in the same script call that hands it out. If the reply is lost
(Redis killed between its write and its reply, a dropped connection, a failover), the messages
stay recorded for this worker although it never received them; redis-py then sends the fetch
again on a new connection and the worker goes on with other messages. Nothing would ever settle
the first ones, and, the worker being alive, the reaper would never take them back.

Guarantees:
- `Holding` is the process's own account of what it holds on one queue: every message handed
  to Dramatiq and not yet settled, per shard. It outlives a consumer: Dramatiq replaces a
  consumer after a connection error while worker threads still run the old one's messages
  (and settle them through the new one), so it is kept by the broker, one per queue.
- `give_back_strays()` compares the in-flight record in Redis with that account and puts
  every recorded message that this process does not hold back at the head of its level and
  tenant (requeue.lua: its delivery count goes down again, as it was never delivered). A
  message that this process holds is never given back, so nothing runs twice because of it.
- Safe against the settles of worker threads running meanwhile: the record is read first,
  the account after it, and nothing is given back while a settle waits in the backlog (it
  may have left the account before it reached Redis). requeue.lua gives back only what is
  still recorded for this worker, so a message settled in between is left alone. Only the
  consumer's own thread fetches into the record, and it is the one that calls this.
The consumer calls it when it starts (a replaced consumer), when a fetch finds more messages
recorded than it holds, and every `CHECK_EVERY_S` at most: a stray is given back within that
bound, well under the heartbeat timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import redis
from redis.commands.core import Script

from .keys import QueueKeys
from .text import as_text

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0


class Holding:
    """The messages this process holds on one queue (fetched, not settled), by shard."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id: dict[str, int] = {}  # redis id -> shard index

    def take(self, shard: int, redis_id: str) -> None:
        with self.lock:
            self.by_id[redis_id] = shard

    def release(self, ids: Iterable[str]) -> None:
        with self.lock:
            for redis_id in ids:
                self.by_id.pop(redis_id, None)

    def count(self, shard: int) -> int:
        with self.lock:
            return sum(1 for index in self.by_id.values() if index == shard)

    def held(self, shard: int) -> set[str]:
        with self.lock:
            return {redis_id for redis_id, index in self.by_id.items() if index == shard}


def give_back_strays(
    client: redis.Redis,
    requeue: Script,
    holding: Holding,
    shards: Iterable[tuple[int, QueueKeys]],
    worker_id: str,
    backlog_pending: Callable[[], bool],
) -> int | None:
    """Put back every message recorded in flight for this worker that it does not hold.
    Returns how many went back, or None when it could not look (a settle waits in the backlog)."""
    given = 0
    for index, keys in shards:
        recorded = [as_text(raw) for raw in client.hkeys(keys.acks(worker_id))]  # first the record
        if not recorded:
            continue
        held = holding.held(index)  # then the account
        if backlog_pending():  # a settle left the account and has not reached Redis yet
            return None
        strays = [redis_id for redis_id in recorded if redis_id not in held]
        if strays:
            put_back = int(requeue(keys=keys.requeue_keys(worker_id), args=strays))
            given += put_back
            if put_back:
                logger.warning(
                    "Gave back %d message(s) of queue %r recorded in flight for this worker but never "
                    "received by it (a reply from Redis was lost); they run again.",
                    put_back,
                    keys.queue,
                )
    return given
