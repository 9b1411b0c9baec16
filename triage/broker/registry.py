"""The registry in Redis: which worker processes are alive, which queues exist, and the reaper.

The life of a worker process, in plain words: before it consumes anything it registers
(`{ns:registry}:workers`: its queues, pid and host) and heartbeats (`{ns:registry}:heartbeats`,
a sorted set by time); the heartbeat middleware (`triage.middleware.heartbeat`) keeps beating and calls
`reap()`. Any worker whose heartbeat is older than the timeout is presumed dead, and its
in-flight messages on each of its queues are taken back atomically (`reclaim.lua`),
keeping their priority and tenant; a message that already killed `max_deliveries` workers
is dead-lettered as `crash-loop` instead. Reaping is idempotent: two reapers racing
reclaim each message once. A worker that stops cleanly does the same with its own records
(`give_back`) before it deregisters, so that nothing they hold outlives its registration.

Queues are registered too (`{ns:registry}:queues`, queue -> label, the tier in practice), by
workers when they boot and by producers when they first enqueue to a queue, so operator
commands list every queue from Redis alone, without importing any application code.

The registry's keys share one hash tag, so its transactions are legal on Redis Cluster.

Failure mode: a worker cut off from Redis for longer than the timeout is presumed dead;
its messages are redelivered elsewhere and may run twice (delivery is at-least-once).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from redis.commands.core import Script

from .clock import now_ms
from .keys import QueueKeys
from .text import as_text

logger = logging.getLogger(__name__)


class WorkerRegistry:
    """The registry of live workers and known queues in Redis, and the reaper of dead workers.

    Parameters:
      client: the Redis client.
      namespace: the key prefix (`{ns:registry}:workers`, `:heartbeats`, `:queues`).
      worker_id: this process's id (the broker's id, which names its in-flight sets).
      scripts: the broker's loaded scripts (`reclaim` is used).
      heartbeat_timeout_ms: a heartbeat older than this means the worker is dead.
      max_deliveries: a queue's default limit of deliveries that killed their worker.
      dead_letter_limits: a queue's dead-letter retention (max entries, max age in ms).
      shards: the keys of a queue's shards (`TriageBroker.shards`; default: the queue's own).
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        namespace: str,
        worker_id: str,
        scripts: Mapping[str, Script],
        heartbeat_timeout_ms: int,
        max_deliveries: Callable[[str], int],
        dead_letter_limits: Callable[[str], tuple[int, int]],
        shards: Callable[[str], list[QueueKeys]] | None = None,
    ) -> None:
        self.client = client
        self.shards = shards or (lambda queue: [QueueKeys(namespace, queue)])
        self.namespace = namespace
        self.worker_id = worker_id
        self.scripts = scripts
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.max_deliveries = max_deliveries
        self.dead_letter_limits = dead_letter_limits
        tag = f"{{{namespace}:registry}}"
        self.heartbeats = f"{tag}:heartbeats"
        self.workers = f"{tag}:workers"
        self.queues_key = f"{tag}:queues"

    # -- queues --------------------------------------------------------------------------

    def record_queues(self, labels: Mapping[str, str], pipe: redis.client.Pipeline | None = None) -> None:
        """Record queues (name -> label), so that operator commands list them; in `pipe` if given."""
        if labels:
            mapping: dict[Any, Any] = dict(labels)
            (pipe if pipe is not None else self.client).hset(self.queues_key, mapping=mapping)

    def known_queues(self) -> dict[str, str]:
        """Every registered queue and its label, in name order."""
        raw: dict[Any, Any] = self.client.hgetall(self.queues_key)
        return {k.decode(): v.decode() for k, v in sorted(raw.items())}

    # -- workers -------------------------------------------------------------------------

    def register(self, queues: Iterable[str], labels: Mapping[str, str]) -> None:
        """Register this worker (consuming `queues`) and the queues it knows (`labels`)."""
        info = {"queues": sorted(queues), "pid": os.getpid(), "host": socket.gethostname(), "started_ms": now_ms()}
        pipe = self.client.pipeline(transaction=False)
        self.record_queues(labels, pipe)
        pipe.hset(self.workers, self.worker_id, json.dumps(info))
        pipe.zadd(self.heartbeats, {self.worker_id: now_ms()})
        pipe.execute()

    def live_workers(self) -> dict[str, int]:
        """Per queue, the worker processes consuming it whose heartbeat is within the timeout."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrangebyscore(self.heartbeats, now_ms() - self.heartbeat_timeout_ms, "+inf")
        pipe.hgetall(self.workers)
        alive, workers = pipe.execute()
        counts: dict[str, int] = {}
        for worker_id in alive:
            info = workers.get(worker_id)
            for queue in json.loads(info)["queues"] if info else []:
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    def worker_details(self) -> list[dict[str, Any]]:
        """Every live worker process (heartbeat within the timeout), oldest first: id, host, pid,
        queues, started_ms, last_beat_ms, and in_flight (messages it holds, over its queues).
        Two round trips: the registry, then every live worker's in-flight counts."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrangebyscore(self.heartbeats, now_ms() - self.heartbeat_timeout_ms, "+inf", withscores=True)
        pipe.hgetall(self.workers)
        alive, workers = pipe.execute()
        rows: list[dict[str, Any]] = []
        for raw_id, beat in alive:
            info = json.loads(workers[raw_id]) if raw_id in workers else {}
            worker_id = as_text(raw_id)
            rows.append({"id": worker_id, "last_beat_ms": int(beat), **info})
        places = [self._shards_of(row.get("queues", [])) for row in rows]
        pipe = self.client.pipeline(transaction=False)
        for row, shards in zip(rows, places, strict=True):
            for _, keys in shards:
                pipe.hlen(keys.acks(row["id"]))
        counts = iter(pipe.execute() if rows else [])
        for row, shards in zip(rows, places, strict=True):
            row["in_flight"] = sum(int(next(counts)) for _ in shards)
        return sorted(rows, key=lambda row: (row.get("started_ms", 0), row["id"]))

    def beat(self) -> None:
        self.client.zadd(self.heartbeats, {self.worker_id: now_ms()})

    def deregister(self) -> None:
        self._forget(self.worker_id)

    def _forget(self, worker_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.heartbeats, worker_id)
        pipe.hdel(self.workers, worker_id)
        pipe.execute()

    def reap(self, fallback_queues: Iterable[str] = ()) -> tuple[int, int]:
        """Reclaim the in-flight messages of every worker presumed dead: (put back, quarantined).

        A dead worker's queues come from its registration; `fallback_queues` serve for one
        whose registration is gone.
        """
        now = now_ms()
        dead: list[Any] = self.client.zrangebyscore(self.heartbeats, "-inf", now - self.heartbeat_timeout_ms)
        back = quarantined = 0
        for raw in dead:
            worker_id = as_text(raw)
            if worker_id == self.worker_id:
                continue  # this process is alive: it is running this code
            info = self.client.hget(self.workers, worker_id)
            queues = json.loads(info)["queues"] if info else sorted(fallback_queues)
            worker_back, worker_quarantined = self._reclaim(worker_id, queues, now)
            self._forget(worker_id)
            logger.warning(
                "Worker %s presumed dead (no heartbeat for %d ms): reclaimed %d message(s), quarantined %d.",
                worker_id,
                self.heartbeat_timeout_ms,
                worker_back,
                worker_quarantined,
            )
            back, quarantined = back + worker_back, quarantined + worker_quarantined
        return back, quarantined

    def give_back(self, queues: Iterable[str]) -> tuple[int, int]:
        """Take back this worker's own in-flight messages on `queues` (every shard) as the reaper
        takes a dead worker's: (put back, quarantined). For a worker that stops with no task
        running, so that nothing its record still holds (a settle that never landed, a fetch whose
        reply was lost) outlives its registration."""
        return self._reclaim(self.worker_id, queues, now_ms())

    def in_flight(self, queues: Iterable[str]) -> int:
        """How many messages this worker's in-flight records on `queues` (every shard) hold."""
        pipe = self.client.pipeline(transaction=False)
        for _, keys in self._shards_of(queues):
            pipe.hlen(keys.acks(self.worker_id))
        return sum(int(count) for count in pipe.execute())

    def _shards_of(self, queues: Iterable[str]) -> list[tuple[str, QueueKeys]]:
        """Every shard of `queues`, with its queue's name: where a worker's in-flight records are."""
        return [(queue_name, keys) for queue_name in queues for keys in self.shards(queue_name)]

    def _reclaim(self, worker_id: str, queues: Iterable[str], now: int) -> tuple[int, int]:
        """Run reclaim.lua on every shard of `queues` for `worker_id`: (put back, quarantined)."""
        back = quarantined = 0
        for queue_name, keys in self._shards_of(queues):
            put_back, dead_lettered = self.scripts["reclaim"](
                keys=keys.reclaim_keys(worker_id),
                args=[now, self.max_deliveries(queue_name), worker_id, *self.dead_letter_limits(queue_name)],
            )
            back, quarantined = back + int(put_back), quarantined + int(dead_lettered)
        return back, quarantined
