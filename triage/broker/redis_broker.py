"""The Triage Redis broker: per-message priority, fair dispatch across tenants, instant
wake-up, delayed messages in Redis, pause/resume, atomic batches.

The life of a message, in plain words:

1. `send()` runs the middleware's `before_enqueue` (payload guard, routing, priority and
   tenant), then one Lua call stores the message and places it: in its queue at its
   priority level (1-10) behind the earlier messages of its tenant, or in the queue's
   delayed set until its eta. The same call leaves a wake-up token for idle consumers.
   A batch is the same call for many messages and queues: all are stored or none.
2. A consumer blocked on the wake-up list returns at once and fetches: one Lua call moves
   the due delayed messages to their places, takes the most urgent level that has work,
   serves the tenants of that level in turn (one message each, round-robin) and records
   every message it hands out as in flight for this worker process, with its level and
   tenant. A tenant over its limits (`tenant_limits`: a token bucket and an in-flight cap)
   is parked instead, its messages left in place, until its next token is due or one of its
   messages settles. A paused queue hands out nothing; its messages wait, and enqueues still work.
3. The worker runs the actor. Success acks: the message is forgotten. A failure that the
   retry policy retries, or a deferral, is stored again (delayed by the backoff, same
   priority and tenant) in the same script call that forgets the failed delivery
   (`retry.lua`): if that call cannot reach Redis, neither happens and the message stays
   in flight. A failure it does not retry is nacked: the message moves to the queue's
   dead letters with the policy's reason, kept until an operator acts or the retention
   drops it (oldest first, counted).
4. A worker that stops puts the messages it fetched but did not start back at the head
   of their level and tenant, in order, and wakes another consumer.
5. A worker that dies (kill -9, out of memory, `os._exit`) stops heartbeating. Once its
   heartbeat is older than the timeout, the next reaper pass of any live worker takes its
   in-flight messages back to the head of their level and tenant. Every delivery is
   counted; a message that was delivered `max_deliveries` times and killed its worker
   each time is moved to the dead letters with reason `crash-loop` instead.
6. A message that cannot be decoded, or names an actor this worker does not know, is
   dead-lettered at once with its raw bytes (reasons `undecodable`, `unknown-actor`).
   Operators list, group, requeue and purge dead letters (`triage.admin.dlq`, `dlq.lua`).

Costs: every enqueue, fetch and settle is one round trip and O(1) Redis work in the
number of queued messages and tenants (a fetch scans at most the ten levels). No KEYS,
no SCAN, no polling. All keys of a queue (of a shard of it) share a hash tag, so each call
touches one cluster slot; a batch spanning queues is one call on a single Redis and one call
per slot on a cluster (`storing.py`).

Sharded queues (`shards`: N > 1, `sharding.py`): a queue's messages are spread over N shards,
each a queue as above with its own hash tag, so one hot queue spans N cluster nodes; consumers
serve the shards in turn, and a retry stays in its shard.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.encoder import Encoder
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage, Middleware

from .backlog import SettleBacklog
from .clock import now_ms
from .connection import client_from_url, is_cluster
from .consumer import TriageConsumer
from .dedup import DuplicateMessage, as_duplicate, dedup_of
from .delivery import DELIVERIES_OPTION, shard_of
from .dispatch import FastDispatch
from .encoder import MsgpackEncoder
from .errors import CONNECTION_ERRORS, connection_lost, join_timeout
from .holding import Holding
from .keys import QueueKeys
from .limits import NO_LIMITS, TENANT_IDLE_MS, Limits, write_limits
from .operations import QueueOperations
from .outcome import Outcome, Placed, set_outcome
from .priority import DEFAULT_PRIORITY, check_priority
from .registry import WorkerRegistry
from .scripts import register
from .sharding import Sharding
from .shedding import LoadShedder, Shedding
from .storing import Group, Storer, group, with_batch_keys

SHARED_TENANT = ""
logger = logging.getLogger(__name__)


REGISTRY_REFRESH_S = 60.0


class TriageBroker(Sharding, QueueOperations, FastDispatch):
    """A Dramatiq broker on Redis with priority levels, tenant round-robin and liveness.

    Parameters:
      url: a Redis URL (`redis://`, `rediss://`, `unix://`, `redis+sentinel://`); or
      client: a ready redis-py client (one of the two is required).
      namespace: the prefix of every key (`{namespace:queue}:...`).
      middleware: Dramatiq middleware, in order (None: Dramatiq's defaults, as its brokers do).
      heartbeat_timeout_ms: a worker silent for this long is presumed dead and reaped.
      max_deliveries: a queue's default limit of deliveries that killed their worker
        before a message is dead-lettered as `crash-loop` (an actor or message option wins).
      queue_label: what the queue registry records for a queue (its tier, in practice), so
        operator commands can list queues from Redis alone.
      dead_letter_limits: a queue's dead-letter retention, (max entries, max age in ms), 0 for
        no limit; the oldest beyond either are dropped and counted (`dead_trimmed_total`).
      tenant_limits: a queue's per-tenant limits: every tenant's (rpm, burst, max in flight, max
        pending; 0: none) and those of tenants with limits of their own (see `lua/_tenants.lua`).
      admission_delay_ms: a queue's admission policy for a tenant over its max pending: 0
        refuses the send (`Backpressure`), more sends it with that delay.
      tenant_idle_ms: how long a tenant stays idle (nothing pending, nothing in flight) before
        its bookkeeping (bucket, counters) is forgotten (`limits.TENANT_IDLE_MS`, an hour).
      shedding: which queues' new messages are held back while which queues' work waits too
        long (`shedding.py`); None: never.
      min_replicas, replica_timeout_ms: durable enqueue: WAIT for that many replicas,
        else raise `ReplicationError` (0: do not wait).
      encoder: how messages are encoded (msgpack by default); the broker reads what it writes
        with this encoder, whatever Dramatiq's global one is.
      shards: a queue's number of shards (1: not sharded).
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        namespace: str = "triage",
        middleware: list[Middleware] | None = None,
        heartbeat_timeout_ms: int = 30_000,
        max_deliveries: Callable[[str], int] = lambda queue_name: 3,
        queue_label: Callable[[str], str] = lambda queue_name: "",
        dead_letter_limits: Callable[[str], tuple[int, int]] = lambda queue_name: (100_000, 90 * 86_400_000),
        tenant_limits: Callable[[str], tuple[Limits, dict[str, Limits]]] = lambda queue_name: (NO_LIMITS, {}),
        admission_delay_ms: Callable[[str], int] = lambda queue_name: 0,
        tenant_idle_ms: int = TENANT_IDLE_MS,
        shedding: Shedding | None = None,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
        encoder: Encoder | None = None,
        shards: Callable[[str], int] = lambda queue_name: 1,
    ) -> None:
        super().__init__(middleware=middleware)
        if client is None and url is None:
            raise ValueError("TriageBroker needs a Redis url or client")
        if isinstance(tenant_idle_ms, bool) or not isinstance(tenant_idle_ms, int) or tenant_idle_ms <= 0:
            raise ValueError(f"TriageBroker's tenant_idle_ms must be a positive number of ms, not {tenant_idle_ms!r}")
        self.client: redis.Redis = client if client is not None else client_from_url(url)  # type: ignore[arg-type]
        self.namespace = namespace
        # Its own encoder, not Dramatiq's global one: what this broker writes, it can read.
        self.encoder: Encoder = encoder or MsgpackEncoder()
        self.broker_id = uuid.uuid4().hex
        self.queues: set[str] = set()
        self._keys: dict[str, QueueKeys] = {}
        self.scripts = register(self.client)
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.registry = WorkerRegistry(
            client=self.client,
            namespace=namespace,
            worker_id=self.broker_id,
            scripts=self.scripts,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            max_deliveries=max_deliveries,
            dead_letter_limits=dead_letter_limits,
            shards=self.shards,
        )
        self.dead_letter_limits = dead_letter_limits
        self.tenant_limits = tenant_limits
        self.admission_delay_ms = admission_delay_ms
        self.tenant_idle_ms = tenant_idle_ms
        self.shedder = LoadShedder(self.client, self.shards, shedding)
        self._limits_published: set[str] = set()
        self.queue_label = queue_label
        # When this process last recorded each queue in the registry (monotonic seconds): again
        # after REGISTRY_REFRESH_S, so a Redis restart without persistence does not hide a queue.
        self._registered: dict[str, float] = {}
        self.draining = False  # set when the worker shuts down: consumers stop fetching
        self.backlog = SettleBacklog(self.scripts)
        self._holdings: dict[str, Holding] = {}  # what this process holds of each queue (holding.py)
        self._holdings_lock = threading.Lock()
        self.shard_count = shards
        self._shards, self._turns = {}, {}
        self.storer = Storer(self.client, self.scripts["enqueue"], tenant_limits, min_replicas, replica_timeout_ms)
        self.cluster = is_cluster(self.client)

    # -- declaration ---------------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue. Delayed messages live in Redis, so there is no delay queue."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            if self.cluster:
                self.check_slots(queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def holding(self, queue_name: str) -> Holding:
        """What this process holds of the queue: one account for all the consumers it makes of it."""
        with self._holdings_lock:
            holding = self._holdings.get(queue_name)
            if holding is None:
                holding = self._holdings[queue_name] = Holding()
            return holding

    def keys(self, queue_name: str) -> QueueKeys:
        """The keys of the queue (of an unsharded queue; of where a sharded one lived before)."""
        keys = self._keys.get(queue_name)
        if keys is None:
            keys = self._keys[queue_name] = QueueKeys(self.namespace, queue_name)
        return keys

    # -- producing -----------------------------------------------------------------------

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue one message, optionally delayed by `delay` ms; priority and tenant come
        from its options (`priority`, `tenant`), set by the placement middleware."""
        placed = self._place(message, delay)
        duplicates = self._store([placed])
        if duplicates:
            if placed.message.options.get("dedup_on_duplicate") == "raise":
                raise DuplicateMessage(placed.dedup_key, message.queue_name, duplicates[0])
            logger.debug("Duplicate of %s not stored (dedup key %r).", duplicates[0], placed.dedup_key)
            return as_duplicate(placed.message, duplicates[0])
        self.emit_after("enqueue", placed.message, delay)
        return placed.message

    def enqueue_batch(self, messages: Iterable[Message[Any] | tuple[Message[Any], int | None]]) -> list[Message[Any]]:
        """Enqueue messages of any actors and queues in one atomic call: every message
        passes the middleware first, and one invalid message means nothing is enqueued."""
        placed = []
        for item in messages:
            message, delay = item if isinstance(item, tuple) else (item, None)
            placed.append(self._place(message, delay))
        duplicates = self._store(placed) if placed else {}
        sent = []
        for i, p in enumerate(placed):
            if i in duplicates:
                logger.debug("Duplicate of %s not stored (dedup key %r).", duplicates[i], p.dedup_key)
                sent.append(as_duplicate(p.message, duplicates[i]))
            else:
                self.emit_after("enqueue", p.message, p.delay)
                sent.append(p.message)
        return sent

    # -- settling a delivery otherwise (policies decide; the consumer applies, atomically) ---

    def retry_later(self, message: MessageProxy, retried: Message[Any], *, delay_ms: int) -> None:
        """Settle `message` by storing `retried` instead (on its queue, after `delay_ms`), in
        the same script call that forgets the failed delivery (see `outcome.py`). A retry is
        not a new submission: the producer hooks (`before_enqueue`: payload guard, priority
        hook, ...) do not run again, so it keeps the priority and tenant it had."""
        # A retry stays in its shard (its slot: on a cluster, one script settles and stores it).
        shard = shard_of(message) if retried.queue_name == message.queue_name else None
        set_outcome(message, Outcome("retry", placed=self._place(retried, delay_ms, hooks=False, shard=shard)))

    def move_later(self, message: MessageProxy, moved: Message[Any], *, delay_ms: int) -> None:
        """Settle `message` by storing `moved` (on another queue, after `delay_ms`) as `retry_later`
        does, but as a move, not a retry: counted as `moved_total`, not among the retries."""
        set_outcome(message, Outcome("move", placed=self._place(moved, delay_ms, hooks=False)))

    def defer(self, message: MessageProxy, *, delay_ms: int) -> None:
        """Settle `message` by putting it back on its queue after `delay_ms`, the same message:
        its retries and its delivery count are not used."""
        set_outcome(message, Outcome("defer", delay_ms=max(0, int(delay_ms))))

    def ack_as_done(self, message: MessageProxy) -> None:
        """Settle `message` as done though it did not run (dropped on purpose): a plain ack."""
        set_outcome(message, Outcome("ack"))

    def dead_letter_as(self, message: MessageProxy, reason: str) -> None:
        """Settle `message` by moving it to the dead letters with `reason`."""
        set_outcome(message, Outcome("dead", reason=reason))
        message.fail()

    def _place(
        self, message: Message[Any], delay: int | None, *, hooks: bool = True, shard: int | None = None
    ) -> Placed:
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
            raise ValueError(f"actor {message.actor_name!r}: delay must be a whole number of ms >= 0, got {delay!r}")
        # A fresh id per enqueue: a retried message keeps its message_id but is a new delivery,
        # and does not inherit the delivery count of the one it retries.
        # (The constructor, not Message.copy: dataclasses.replace costs more than the rest.)
        options = dict(message.options)
        options.pop(DELIVERIES_OPTION, None)
        options["redis_message_id"] = os.urandom(16).hex()
        message = Message(
            queue_name=message.queue_name,
            actor_name=message.actor_name,
            args=message.args,
            kwargs=message.kwargs,
            options=options,
            message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )
        hold = 0
        if hooks:  # new work: through the producer hooks, and held back while shedding load
            self.emit_before("enqueue", message, delay)
            hold = self.shedder.hold_ms(message.queue_name)
        level = check_priority(message.options.get("priority", DEFAULT_PRIORITY), actor_name=message.actor_name)
        tenant = message.options.get("tenant") or SHARED_TENANT
        wait = max(delay or 0, hold)
        eta = now_ms() + wait if wait else 0
        max_deliveries = message.options.get("max_deliveries")
        if max_deliveries is None:
            actor = self.actors.get(message.actor_name)
            max_deliveries = actor.options.get("max_deliveries", 0) if actor is not None else 0
        payload = self.encoder.encode(
            {
                "queue_name": message.queue_name,
                "actor_name": message.actor_name,
                "args": message.args,
                "kwargs": message.kwargs,
                "options": message.options,
                "message_id": message.message_id,
                "message_timestamp": message.message_timestamp,
            }
        )  # Message.asdict(), without its per-field reflection
        key, mode, ttl_ms = dedup_of(message) if hooks else ("", "", 0)
        if shard is None:
            shard = self._shard_of(message.queue_name, str(tenant), key)
        return Placed(
            message,
            delay,
            payload,
            level,
            str(tenant),
            eta,
            int(max_deliveries),
            hold > (delay or 0),
            key,
            mode,
            ttl_ms,
            shard,
        )

    def _store(self, placed: Sequence[Placed]) -> dict[int, str]:
        """Store the messages (`storing.py`); the duplicates (their index in `placed`, the
        holder's message_id), which were not stored."""
        groups = self._groups(placed)
        if self.cluster and len(groups) > 1:  # stored slot by slot: each message once, sent again or not
            placed = with_batch_keys(placed)
            groups = self._groups(placed)
        stale = time.monotonic() - REGISTRY_REFRESH_S
        queues = {g.keys.queue for g in groups}
        unregistered = [q for q in sorted(queues) if self._registered.get(q, stale) <= stale]
        try:
            for queue_name in queues:  # once per process and queue: tenants' own limits, for admission
                self.publish_tenant_limits(queue_name, replace=False)
            if unregistered:  # a queue's first enqueue from this process: in the registry
                self.registry.record_queues({q: self.queue_label(q) for q in unregistered})
        except CONNECTION_ERRORS as exc:
            raise connection_lost(exc) from None
        duplicates = self.storer.store(groups, placed, now_ms())
        self._registered.update(dict.fromkeys(unregistered, time.monotonic()))
        return duplicates

    def _groups(self, placed: Sequence[Placed]) -> list[Group]:
        # Admission is for new work from outside: what a running message sends (fan-out, a
        # pipeline's next step, a callback) was admitted with it, and an after-hook could not
        # give a refusal back to anyone.
        inside = CurrentMessage.get_current_message() is not None

        def admission(queue: str) -> list[int]:
            return [0 if inside else self.tenant_defaults(queue)[3], self.admission_delay_ms(queue)]

        return group(placed, lambda p: self.shards(p.message.queue_name)[p.shard], admission)

    def queue_labels(self) -> dict[str, str]:
        """Every declared queue and its label, for the registry."""
        return {queue_name: self.queue_label(queue_name) for queue_name in sorted(self.queues)}

    # -- consuming -----------------------------------------------------------------------

    @property
    def consumer_class(self) -> type[TriageConsumer]:
        return TriageConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> TriageConsumer:
        """A consumer of the queue. Redis unreachable raises Dramatiq's `ConnectionClosed`, so that
        Dramatiq's worker logs one line and makes the consumer again a few seconds later."""
        try:
            self.publish_tenant_limits(queue_name)
            return TriageConsumer(self, queue_name, prefetch, timeout)
        except CONNECTION_ERRORS as exc:
            raise connection_lost(exc) from None

    def tenant_defaults(self, queue_name: str) -> Limits:
        return self.tenant_limits(queue_name)[0]

    def publish_tenant_limits(self, queue_name: str, *, replace: bool = True) -> None:
        """Write the queue's tenant limits where the fetch reads them (tenants with limits of their
        own; "*": the defaults, for operators). A worker (`replace`) replaces what an earlier
        configuration wrote; a producer only adds its own, never erasing the workers'."""
        if queue_name in self._limits_published:
            return
        for keys in self.shards(queue_name):
            write_limits(self.client, keys.limits, *self.tenant_limits(queue_name), replace=replace)
        self._limits_published.add(queue_name)

    def join(self, queue_name: str, *, interval: int = 100, timeout: int | None = None) -> None:
        """Wait until the queue has nothing queued, delayed or running (for tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while sum(self.counts(queue_name)):
            if deadline is not None and time.monotonic() >= deadline:
                raise join_timeout(queue_name)
            time.sleep(interval / 1000)

    def close(self) -> None:
        self.client.close()


def triage_broker(broker: Broker, *, needed_by: object) -> TriageBroker:
    """`broker` as a TriageBroker, or a TypeError naming the middleware that needs one."""
    if not isinstance(broker, TriageBroker):
        raise TypeError(f"{type(needed_by).__name__} needs the Triage broker, not {type(broker).__name__}")
    return broker
