"""The consumer: blocks while idle, fetches in small batches, settles messages as they finish.

Guarantees:
- An idle consumer blocks on its queue's wake-up list (BLPOP) instead of polling; an
  enqueue, a resume or a requeue wakes it within a round trip. It wakes by itself when
  the next delayed message falls due, on time by its own clock (`waiting.py`), and at least
  every `timeout` ms so the worker can check for shutdown. No busy loop: with nothing due,
  one call per `timeout`.
- A sharded queue's consumer serves its shards in turn: each fetch starts at the shard after
  the one that last gave work, and takes from the first that has some. Every delivered
  message is settled on its own shard (`shard_of`). The queue's own keys (where it lived
  before it was sharded) are served too, but once found empty only every `LEGACY_RECHECK_S`.
- It holds at most `prefetch` messages (Dramatiq passes twice the worker threads) and
  fetches only when no more than half of that is outstanding: a busy worker keeps about
  one message per thread waiting beyond those running, so urgent messages are not stuck
  behind a hoard in another worker's memory.
- A delivered message is the message `send()` returned: equal to it, options included. What the
  broker learns at fetch (the delivery count, when the message became ready to run) stays on
  the delivered proxy, read with `delivery_count(message)` and `ready_at_ms(message)`, and
  never travels with a copy of the message that middleware enqueues again.
- A suspect (a message reclaimed from a worker that died) is fetched alone, and nothing
  more is fetched until it is settled: a poison message crashes its worker alone.
- A message that cannot be decoded, or whose envelope is not what a Triage producer writes
  (fields of the wrong type, options that are not a map, a `redis_message_id` missing or naming
  another message), is dead-lettered at once (reason `undecodable`, with what is wrong, raw
  bytes kept) and the consumer goes on; a nack records why the message failed (the
  policy's reason, `unknown-actor`, `expired`, else `failed`) with the error type,
  message and a truncated traceback.
- An ack applies the policy's decision (`outcome.py`): a retry or a deferral is stored in
  the same script call that forgets the delivery. On a cluster, a retry or move to another
  slot (another queue) is two idempotent steps: stored there under a window key named after
  the delivery (stored once, however often the step runs), then forgotten here (`handed`).
- A delivery is settled by the id the fetch handed out (`redis_id_of`), never by what the
  payload claims.
- Every message recorded in flight for this worker is in its hands or given back: a fetch whose
  reply was lost (and that redis-py sent again) leaves messages recorded for a worker that never
  received them; the consumer gives them back when it starts, as soon as a fetch shows more
  recorded than it holds, and every `CHECK_EVERY_S` (`holding.py`).
- A delivered message prints as `actor(id=…)`: its arguments stay out of Dramatiq's logs.
- Acks made while another is being written go to Redis together, in one call, each returning
  once written (`acks.py`). Ack, nack and requeue may be called from any worker thread; when
  Redis is unreachable they do not block or fail it: they wait in the broker's backlog
  (`backlog.py`) and are applied, in order, as soon as Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.encoder import Encoder
from dramatiq.errors import ActorNotFound, DecodeError
from dramatiq.message import Message
from redis.commands.core import Script

from .acks import GroupCommit
from .backlog import SettleBacklog
from .clock import now_ms
from .errors import CONNECTION_ERRORS, connection_lost
from .holding import CHECK_EVERY_S, Holding, give_back_strays
from .keys import QueueKeys
from .limits import Limits
from .outcome import Placed, failure_info, outcome_of
from .priority import DEFAULT_PRIORITY
from .storing import Storer, group
from .waiting import TICK_MARGIN_S, ShardWaker, client_socket_timeout, server_tick_s, wait_one

logger = logging.getLogger(__name__)

MAX_DUE_MOVED_PER_FETCH = 1000
LEGACY_RECHECK_S = 5.0
HANDED_KEY_PREFIX = "triage.handed:"
HANDED_KEY_TTL_MS = 7 * 86_400_000
DELIVERIES_OPTION = "triage_deliveries"  # where versions before 0.2 kept the count (dropped on re-enqueue)
_DELIVERIES = "_triage_deliveries"  # the proxy's attributes
_READY = "_triage_ready_ms"
_SHARD = "_triage_shard"
_REDIS_ID = "_triage_redis_id"
# The envelope a Triage producer writes: each field and its type.
ENVELOPE: dict[str, type | tuple[type, ...]] = {
    "queue_name": str,
    "actor_name": str,
    "args": (list, tuple),
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}


def delivery_count(message: Message[Any] | MessageProxy) -> int:
    """How many times the broker has handed this message to a worker, this delivery included:
    1 on a first delivery, more after the worker that held it died (a retry is a new message,
    delivered for the first time). A message that was not delivered by a Triage broker: 1."""
    count = message.__dict__.get(_DELIVERIES) if isinstance(message, MessageProxy) else None
    return int(count) if count else 1


def ready_at_ms(message: Message[Any] | MessageProxy) -> int | None:
    """When the delivered message became ready to run (epoch ms): its enqueue, by Redis's clock,
    or its eta for a delayed message or a retry, by the clock of the process that set it (or
    Redis's, if that is earlier). None for a message not delivered by Triage."""
    ready = message.__dict__.get(_READY) if isinstance(message, MessageProxy) else None
    return int(ready) if ready else None


def shard_of(message: Message[Any] | MessageProxy) -> int:
    """Which shard of its queue the delivered message came from (0 when not sharded)."""
    shard = message.__dict__.get(_SHARD) if isinstance(message, MessageProxy) else None
    return int(shard or 0)


def redis_id_of(message: Message[Any] | MessageProxy) -> str:
    """The id the broker handed the delivered message out under (what settles it); for a message
    not delivered by a Triage broker, the id its options name."""
    handed = message.__dict__.get(_REDIS_ID) if isinstance(message, MessageProxy) else None
    return str(handed) if handed is not None else str(message.options["redis_message_id"])


def envelope_error(fields: Any, redis_id: str | None = None) -> str | None:
    """What makes decoded fields not a message a Triage producer wrote, or None. With `redis_id`,
    its options must name that id (the one it was stored and handed out under)."""
    if not isinstance(fields, dict):
        return f"the message is a {type(fields).__name__}, not a map"
    for name, kind in ENVELOPE.items():
        if name not in fields:
            return f"field {name!r} is missing"
        if not isinstance(fields[name], kind) or isinstance(fields[name], bool):
            return f"field {name!r} is a {type(fields[name]).__name__}"
    unknown = sorted(set(fields) - set(ENVELOPE))
    if unknown:
        return f"unknown field(s) {', '.join(map(repr, unknown))}"
    if redis_id is None:
        return None
    claimed = fields["options"].get("redis_message_id")
    if claimed is None:
        return "options lack redis_message_id"
    if claimed != redis_id:
        return f"options name another message's id ({str(claimed)[:40]!r})"
    return None


class Shard:
    """One shard of a consumer's queue: its keys and the key lists of its scripts."""

    def __init__(self, keys: QueueKeys, consumer_id: str, write_acks: Callable[[Shard, list[str]], None]) -> None:
        self.keys = keys
        self.acks = GroupCommit(lambda ids: write_acks(self, ids))
        self.fetch_keys = keys.fetch_keys(consumer_id)
        self.settle_keys = keys.settle_keys(consumer_id)
        self.requeue_keys = keys.requeue_keys(consumer_id)
        self.next_eta = -1
        self.next_due = -1  # the next delayed message's eta (next_eta may be a parked tenant's time)


class TriageMessageProxy(MessageProxy):
    """A delivered message whose text form names the actor and message id, never the arguments:
    Dramatiq's worker logs messages with `%s` at ERROR and WARNING, and arguments may be
    personal data. (Actors still log their arguments at DEBUG.)"""

    def __str__(self) -> str:
        return f"{self.actor_name}(id={self.message_id})"

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self}>"


class ConsumerHost(Protocol):
    """What a consumer uses of its broker (`TriageBroker` is one)."""

    client: redis.Redis
    encoder: Encoder
    broker_id: str
    draining: bool
    backlog: SettleBacklog
    scripts: dict[str, Script]
    storer: Storer
    cluster: bool

    def dead_letter_limits(self, queue_name: str) -> tuple[int, int]: ...

    def holding(self, queue_name: str) -> Holding: ...

    def tenant_defaults(self, queue_name: str) -> Limits: ...

    def keys(self, queue_name: str) -> QueueKeys: ...

    def shards(self, queue_name: str) -> list[QueueKeys]: ...


class TriageConsumer(Consumer):
    def __init__(self, broker: ConsumerHost, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.consumer_id = broker.broker_id
        self.shards = [Shard(keys, self.consumer_id, self._write_acks) for keys in broker.shards(queue_name)]
        self.keys = self.shards[0].keys
        self.turn = 0  # the shard the next fetch starts at
        self.legacy = len(self.shards) - 1 if len(self.shards) > 1 else -1  # see `_fetch`
        self.legacy_due = 0.0
        self.limits = broker.tenant_defaults(queue_name)[:3]  # every tenant's (rpm, burst, max in flight)
        self.prefetch = max(1, prefetch)
        self.low_water = max(1, self.prefetch // 2)
        # A blocking wait must end before the client's socket timeout (redis-py's default is 5 s).
        socket_timeout = client_socket_timeout(broker.client)
        self.timeout = max(timeout, 10) / 1000
        if socket_timeout:
            self.timeout = min(self.timeout, socket_timeout * 0.8)
        self.cache: deque[MessageProxy] = deque()
        self.outstanding = 0  # fetched by this consumer and not settled yet, cache included
        self.lock = threading.Lock()
        self.settled = threading.Event()
        self.holding = broker.holding(queue_name)  # the same, for every consumer of the queue in this process
        self.check_due = 0.0  # when to look for messages recorded in flight here but not held (at once)
        self.stretch = server_tick_s(broker.client) + TICK_MARGIN_S
        self.suspect: str | None = None  # a message reclaimed from a dead worker, being run alone
        self.waker: ShardWaker | None = None
        if len(self.shards) > 1:
            wakes = [shard.keys.wake for shard in self.shards]
            self.waker = ShardWaker(broker.client, wakes, self.timeout, f"triage-{queue_name}")

    @property
    def next_eta(self) -> int:
        """When the next delayed message or parked tenant of any shard is due (epoch ms; -1: none)."""
        return min((shard.next_eta for shard in self.shards if shard.next_eta > 0), default=-1)

    def __next__(self) -> MessageProxy | None:
        try:
            if self.broker.draining:  # shutting down: hand out nothing more; close() gives the cache back
                time.sleep(min(self.timeout, 0.1))
                return None
            if self.cache:
                return self.cache.popleft()
            if time.monotonic() >= self.check_due:
                self._give_back_strays()
            with self.lock:
                outstanding = self.outstanding
            if outstanding > self.low_water or self.suspect is not None:
                self.settled.clear()
                self.settled.wait(self.timeout)
                return None
            if self.broker.backlog.pending and not self.broker.backlog.flush():
                raise redis.ConnectionError("settles are still waiting for Redis")
            if self._fetch(self.prefetch - outstanding):
                return self.cache.popleft()
            self._block()
            return None
        except CONNECTION_ERRORS as exc:
            raise connection_lost(exc) from None

    def _give_back_strays(self) -> None:
        """Give back what Redis records in flight for this worker but it does not hold (holding.py)."""
        given = give_back_strays(
            self.broker.client,
            self.broker.scripts["requeue"],
            self.holding,
            [(index, shard.keys) for index, shard in enumerate(self.shards)],
            self.consumer_id,
            lambda: bool(self.broker.backlog.pending),
        )
        self.check_due = time.monotonic() + (CHECK_EVERY_S if given is not None else 0.1)

    def _fetch(self, count: int) -> bool:
        """Fetch from the shards in turn, from the one after the last that gave work, until one
        gives some. The queue's own keys of a sharded queue (where it lived before it was
        sharded) are asked again only `LEGACY_RECHECK_S` after they were found empty."""
        for step in range(len(self.shards)):
            index = (self.turn + step) % len(self.shards)
            legacy = index == self.legacy
            if legacy and time.monotonic() < self.legacy_due:
                continue
            if self._fetch_shard(index, count):
                self.turn = (index + 1) % len(self.shards)
                return True
            if legacy and self.shards[index].next_eta < 0:
                self.legacy_due = time.monotonic() + LEGACY_RECHECK_S
        return False

    def _fetch_shard(self, index: int, count: int) -> bool:
        shard = self.shards[index]
        # What this process holds before the fetch: settles made meanwhile only lower it, so Redis
        # recording more than that plus what this fetch hands out means strays, not a race with acks.
        held_before = self.holding.count(index)
        fetched, next_eta, suspect, next_due, recorded = self.broker.scripts["fetch"](
            keys=shard.fetch_keys, args=[now_ms(), count, MAX_DUE_MOVED_PER_FETCH, *self.limits]
        )
        shard.next_eta, shard.next_due = int(next_eta), int(next_due)
        if suspect:
            self.suspect = fetched[-4].decode()
        handed = len(fetched) // 4
        for i in range(0, len(fetched), 4):
            raw_id, payload, deliveries, ready = fetched[i : i + 4]
            redis_id = raw_id.decode()
            try:
                proxy = TriageMessageProxy(self._decode(payload, redis_id))
            except DecodeError as exc:
                self._dead_letter_undecodable(shard, redis_id, exc)
                if self.suspect == redis_id:
                    self.suspect = None  # settled: nothing to wait for
                continue
            proxy.__dict__[_REDIS_ID] = redis_id
            proxy.__dict__[_DELIVERIES] = int(deliveries)
            proxy.__dict__[_READY] = int(ready)
            if index:
                proxy.__dict__[_SHARD] = index
            self.holding.take(index, redis_id)
            with self.lock:
                self.outstanding += 1
            self.cache.append(proxy)
        if int(recorded) > held_before + handed:
            self.check_due = 0.0  # more recorded than held: an earlier fetch's reply was lost
        return bool(self.cache)

    def _decode(self, payload: bytes, redis_id: str) -> Message[Any]:
        """`Message.decode` with this broker's encoder rather than Dramatiq's global one, for the
        envelope a Triage producer writes only (`envelope_error`)."""
        try:
            fields = self.broker.encoder.decode(payload)
        except Exception as exc:
            raise DecodeError("Failed to decode message.", payload, exc) from exc  # type: ignore[no-untyped-call]
        problem = envelope_error(fields, redis_id)
        if problem is not None:
            cause = ValueError(f"not a Triage message: {problem}")
            raise DecodeError("Failed to decode message.", payload, cause) from cause  # type: ignore[no-untyped-call]
        fields["args"] = tuple(fields["args"])
        return Message(**fields)

    def _dead_letter_undecodable(self, shard: Shard, redis_id: str, exc: DecodeError) -> None:
        logger.error(
            "Message %s on queue %r cannot be decoded (%s); moved to the dead letters.",
            redis_id,
            self.queue_name,
            exc.__cause__ or exc,
        )
        args = self._nack_args(redis_id, "undecodable", exc.__cause__ or exc)
        self.broker.backlog.run("settle", shard.settle_keys, args)

    def _block(self) -> None:
        """Wait for a wake-up token, the next due time, or `timeout`, whichever comes first."""
        now, wait = now_ms(), self.timeout
        if self.next_eta > 0:
            wait = min(wait, max(0.001, (self.next_eta - now) / 1000))
        if self.waker is not None:
            self.waker.wait(wait)
            return
        shard = self.shards[0]
        due_in = (shard.next_due - now) / 1000 if shard.next_due > 0 else wait + 1
        wait_one(self.broker.client, shard.keys.wake, wait=wait, due_in=due_in, stretch=self.stretch)

    def ack(self, message: MessageProxy) -> None:
        """Forget the delivery; or, when a policy decided so, retry or defer it in the same call."""
        redis_id = redis_id_of(message)
        shard = self.shards[shard_of(message)]
        outcome = outcome_of(message)
        if outcome is None or outcome.kind == "ack":
            shard.acks.ack(redis_id)  # with the acks other threads make meanwhile, in one call
        elif outcome.kind == "dead":  # decided dead but not failed: dead-letter it all the same
            self.nack(message)
        elif outcome.kind == "defer":
            now = now_ms()
            level = message.options.get("priority", DEFAULT_PRIORITY)
            tenant = message.options.get("tenant") or ""
            args = ["defer", now, redis_id, "", "", level, tenant, now + outcome.delay_ms, 0]
            self._settle_retry(message, shard.keys.retry_keys(shard.keys, self.consumer_id), args)
        else:
            placed = outcome.placed
            assert placed is not None
            target = self.broker.shards(placed.message.queue_name)[placed.shard]
            if self.broker.cluster and target.tag != shard.keys.tag:
                self._hand_over(message, shard, target, placed, outcome.kind)
                return
            new_id = placed.message.options["redis_message_id"]
            args = [
                outcome.kind,  # "retry" or "move"
                now_ms(),
                redis_id,
                new_id,
                placed.payload,
                placed.level,
                placed.tenant,
                placed.eta,
                placed.max_deliveries,
            ]
            self._settle_retry(message, target.retry_keys(shard.keys, self.consumer_id), args)

    def _hand_over(self, message: MessageProxy, shard: Shard, target: QueueKeys, placed: Placed, kind: str) -> None:
        """A retry or move to another cluster slot: two steps, each idempotent. First the new
        message is stored there under a window key named after this delivery (a second run
        finds the key held and stores nothing); then the delivery is forgotten here. If the
        first step cannot reach Redis, the delivery stays in flight (redelivered, or reclaimed);
        if Redis refuses it, the message is dead-lettered as `retry-failed`."""
        redis_id = redis_id_of(message)
        keyed = placed._replace(dedup_key=HANDED_KEY_PREFIX + redis_id, dedup_mode="w", dedup_ttl_ms=HANDED_KEY_TTL_MS)
        steps = group([keyed], lambda _: target, lambda _: [0, 0])  # no admission: it was admitted once
        if self._retry_written(message, lambda: self.broker.storer.store(steps, [keyed], now_ms())):
            counter = "retries_total" if kind == "retry" else "moved_total"
            self._settle("settle", shard.settle_keys, ["handed", now_ms(), redis_id, counter], redis_id)

    def _settle_retry(self, message: MessageProxy, keys: list[str], args: list[Any]) -> None:
        """Run retry.lua (it stores the retry and forgets the delivery in one call)."""
        if self._retry_written(message, lambda: self.broker.backlog.run("retry", keys, args)):
            self._release([redis_id_of(message)])

    def _retry_written(self, message: MessageProxy, write: Callable[[], object]) -> bool:
        """Write the message's retry, deferral or move. If Redis refuses it (not unreachable: an
        error of the script or of the keys), dead-letter the message instead (reason
        `retry-failed`) rather than leave it in flight for good, and say False; on any other
        error the delivery stays in flight and the error is raised."""
        try:
            write()
        except redis.ResponseError as exc:
            logger.error("Retry of message %s refused by Redis (%s); dead-lettered instead.", message, exc)
            self._nack(message, "retry-failed", exc)  # releases it
            return False
        except BaseException:
            self._release([redis_id_of(message)])
            raise
        return True

    def nack(self, message: MessageProxy) -> None:
        """Move the message to the dead letters, with why (the policy's reason, else what failed)."""
        exception = getattr(message, "_exception", None)
        outcome = outcome_of(message)
        if outcome is not None and outcome.kind == "dead":
            reason = outcome.reason
        elif isinstance(exception, ActorNotFound):
            reason = "unknown-actor"
        else:
            reason = "failed" if exception is not None else "expired"  # Dramatiq's AgeLimit fails with none
        self._nack(message, reason, exception)

    def _nack(self, message: MessageProxy, reason: str, exception: BaseException | None) -> None:
        redis_id = redis_id_of(message)
        args = self._nack_args(redis_id, reason, exception, actor=message.actor_name)
        self._settle("settle", self.shards[shard_of(message)].settle_keys, args, redis_id)

    def _nack_args(self, redis_id: Any, reason: str, exception: BaseException | None, **extra: Any) -> list[Any]:
        """settle.lua's arguments for a nack: why, the last error, the queue's retention."""
        info = failure_info(reason, exception, queue=self.queue_name, **extra)
        return ["nack", now_ms(), redis_id, info, *self.broker.dead_letter_limits(self.queue_name)]

    def _settle(self, script: str, keys: list[str], args: list[Any], *ids: str) -> None:
        """Run a settle script; the ids are released unless this thread is interrupted (acks.py)."""
        try:
            self.broker.backlog.run(script, keys, args)
        except Exception:
            self._release(list(ids))
            raise
        self._release(list(ids))

    def _write_acks(self, shard: Shard, ids: list[str]) -> None:
        self._settle("settle", shard.settle_keys, ["ack", now_ms(), *ids], *ids)  # acks made together (acks.py)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        by_shard: dict[int, list[str]] = {}
        for m in messages:
            by_shard.setdefault(shard_of(m), []).append(redis_id_of(m))
        for index, ids in by_shard.items():
            try:
                self.broker.backlog.run("requeue", self.shards[index].requeue_keys, ids)
            finally:
                self._release(ids)

    def _release(self, ids: list[str]) -> None:
        self.holding.release(ids)
        with self.lock:
            self.outstanding = max(0, self.outstanding - len(ids))
            if self.suspect in ids:
                self.suspect = None
        self.settled.set()

    def close(self) -> None:
        for shard in self.shards:
            shard.acks.flush()
        if self.waker is not None:
            self.waker.stop()
        cached: list[Any] = list(self.cache)
        self.cache.clear()
        self.requeue(cached)
