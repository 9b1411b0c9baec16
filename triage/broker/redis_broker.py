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
no SCAN, no polling. All keys of a queue share a hash tag, so each call touches one
cluster slot; a batch spanning queues touches one block of keys per queue and needs
them on one node (any single Redis or Sentinel setup).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.encoder import Encoder
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage, Middleware

from .backlog import SettleBacklog
from .clock import now_ms
from .connection import client_from_url
from .consumer import DELIVERIES_OPTION, TriageConsumer
from .dedup import DuplicateMessage, as_duplicate, dedup_of
from .dispatch import FastDispatch
from .encoder import MsgpackEncoder
from .errors import CONNECTION_ERRORS, ReplicationError, connection_lost, join_timeout
from .keys import QueueKeys
from .limits import NO_LIMITS, Limits, refusal, write_limits
from .operations import QueueOperations
from .outcome import Outcome, Placed, set_outcome
from .priority import DEFAULT_PRIORITY, check_priority
from .registry import WorkerRegistry
from .scripts import register
from .shedding import LoadShedder, Shedding
from .text import as_text

SHARED_TENANT = ""
logger = logging.getLogger(__name__)


REGISTRY_REFRESH_S = 60.0


class TriageBroker(QueueOperations, FastDispatch):
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
      shedding: which queues' new messages are held back while which queues' work waits too
        long (`shedding.py`); None: never.
      min_replicas, replica_timeout_ms: durable enqueue: WAIT for that many replicas,
        else raise `ReplicationError` (0: do not wait).
      encoder: how messages are encoded (msgpack by default); the broker reads what it writes
        with this encoder, whatever Dramatiq's global one is.
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
        shedding: Shedding | None = None,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        if client is None and url is None:
            raise ValueError("TriageBroker needs a Redis url or client")
        self.client: redis.Redis = client if client is not None else client_from_url(url)  # type: ignore[arg-type]
        self.namespace = namespace
        # Its own encoder, not Dramatiq's global one: what this broker writes, it can read.
        self.encoder: Encoder = encoder or MsgpackEncoder()
        self.broker_id = uuid.uuid4().hex
        self.queues: set[str] = set()
        self._keys: dict[str, QueueKeys] = {}
        self.scripts = register(self.client)
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.registry = WorkerRegistry(
            client=self.client,
            namespace=namespace,
            worker_id=self.broker_id,
            scripts=self.scripts,
            heartbeat_timeout_ms=heartbeat_timeout_ms,
            max_deliveries=max_deliveries,
            dead_letter_limits=dead_letter_limits,
        )
        self.dead_letter_limits = dead_letter_limits
        self.tenant_limits = tenant_limits
        self.admission_delay_ms = admission_delay_ms
        self.shedder = LoadShedder(self.client, self.keys, shedding)
        self._limits_published: set[str] = set()
        self.queue_label = queue_label
        # When this process last recorded each queue in the registry (monotonic seconds): again
        # after REGISTRY_REFRESH_S, so a Redis restart without persistence does not hide a queue.
        self._registered: dict[str, float] = {}
        self.draining = False  # set when the worker shuts down: consumers stop fetching
        self.backlog = SettleBacklog(self.scripts)

    # -- declaration ---------------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue. Delayed messages live in Redis, so there is no delay queue."""
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def keys(self, queue_name: str) -> QueueKeys:
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
        set_outcome(message, Outcome("retry", placed=self._place(retried, delay_ms, hooks=False)))

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

    def _place(self, message: Message[Any], delay: int | None, *, hooks: bool = True) -> Placed:
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
        )

    def _store(self, placed: Sequence[Placed]) -> dict[int, str]:
        """Store the messages in one script call; the duplicates (their index in `placed`, the
        holder's message_id), which were not stored."""
        groups: dict[str, list[Any]] = {}
        members: dict[str, list[int]] = {}  # per queue, the index in `placed` of each of its messages
        for i, p in enumerate(placed):
            groups.setdefault(p.message.queue_name, []).extend(p.fields())
            members.setdefault(p.message.queue_name, []).append(i)
        keys: list[str] = []
        for queue_name in groups:
            keys += self.keys(queue_name).enqueue_keys()
        # Lua's cmsgpack reads byte strings as msgpack "raw": no bin type.
        # Admission is for new work from outside: what a running message sends (fan-out, a
        # pipeline's next step, a callback) was admitted with it, and an after-hook could not
        # give a refusal back to anyone.
        inside = CurrentMessage.get_current_message() is not None
        admission = [[0 if inside else self.tenant_defaults(q)[3], self.admission_delay_ms(q)] for q in groups]
        args = [now_ms(), msgpack.packb(list(groups.values()), use_bin_type=False), msgpack.packb(admission)]
        stale = time.monotonic() - REGISTRY_REFRESH_S
        unregistered = [q for q in groups if self._registered.get(q, stale) <= stale]
        try:
            for queue_name in groups:  # once per process and queue: tenants' own limits, for admission
                self.publish_tenant_limits(queue_name, replace=False)
            if not self.min_replicas and not unregistered:
                return self._stored(self.scripts["enqueue"](keys=keys, args=args), groups, members, placed)
            # The same round trip records a queue's first enqueue in the registry, and waits
            # for replicas (durable enqueue: WAIT on the same connection, right after the script).
            pipe = self.client.pipeline(transaction=False)
            self.registry.record_queues({q: self.queue_label(q) for q in unregistered}, pipe)
            self.scripts["enqueue"](keys=keys, args=args, client=pipe)
            if self.min_replicas:
                pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)  # type: ignore[no-untyped-call]
            replies = pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise connection_lost(exc) from None
        self._registered.update(dict.fromkeys(unregistered, time.monotonic()))
        duplicates = self._stored(replies[-2] if self.min_replicas else replies[-1], groups, members, placed)
        if self.min_replicas and replies[-1] < self.min_replicas:
            raise ReplicationError(len(placed), int(replies[-1]), self.min_replicas, self.replica_timeout_ms)
        return duplicates

    def _stored(
        self, reply: list[Any], groups: dict[str, list[Any]], members: dict[str, list[int]], placed: Sequence[Placed]
    ) -> dict[int, str]:
        """The duplicates of the enqueue script's reply; `Backpressure` if it refused a tenant (it
        then stored nothing)."""
        if as_text(reply[0]) == "refused":
            raise refusal(reply[1:], list(groups), groups, self.tenant_limits)
        queues = list(members)
        duplicates = {}
        for at in range(2, len(reply), 3):
            index, holder = members[queues[int(reply[at]) - 1]][int(reply[at + 1]) - 1], as_text(reply[at + 2])
            if holder != placed[index].message.message_id:  # else: sent again after a lost reply, stored already
                duplicates[index] = holder
        return duplicates

    def queue_labels(self) -> dict[str, str]:
        """Every declared queue and its label, for the registry."""
        return {queue_name: self.queue_label(queue_name) for queue_name in sorted(self.queues)}

    # -- consuming -----------------------------------------------------------------------

    @property
    def consumer_class(self) -> type[TriageConsumer]:
        return TriageConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> TriageConsumer:
        self.publish_tenant_limits(queue_name)
        return TriageConsumer(self, queue_name, prefetch, timeout)

    def tenant_defaults(self, queue_name: str) -> Limits:
        return self.tenant_limits(queue_name)[0]

    def publish_tenant_limits(self, queue_name: str, *, replace: bool = True) -> None:
        """Write the queue's tenant limits where the fetch reads them (tenants with limits of their
        own; "*": the defaults, for operators). A worker (`replace`) replaces what an earlier
        configuration wrote; a producer only adds its own, never erasing the workers'."""
        if queue_name in self._limits_published:
            return
        write_limits(self.client, self.keys(queue_name).limits, *self.tenant_limits(queue_name), replace=replace)
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
