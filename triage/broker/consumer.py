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
- A delivered message is the message `send()` returned, with what the broker learned at fetch
  kept on its proxy (`delivery.py`).
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
from redis.commands.core import Script

from .acks import GroupCommit
from .backlog import SettleBacklog
from .clock import now_ms
from .delivery import delivered, redis_id_of, shard_of
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
    tenant_idle_ms: int

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
            keys=shard.fetch_keys,
            args=[now_ms(), count, MAX_DUE_MOVED_PER_FETCH, *self.limits, self.broker.tenant_idle_ms],
        )
        shard.next_eta, shard.next_due = int(next_eta), int(next_due)
        if suspect:
            self.suspect = fetched[-4].decode()
        handed = len(fetched) // 4
        for i in range(0, len(fetched), 4):
            raw_id, payload, deliveries, ready = fetched[i : i + 4]
            redis_id = raw_id.decode()
            try:
                proxy = delivered(self.broker.encoder, payload, redis_id, int(deliveries), int(ready), index)
            except DecodeError as exc:
                self._dead_letter_undecodable(shard, redis_id, exc)
                if self.suspect == redis_id:
                    self.suspect = None  # settled: nothing to wait for
                continue
            self.holding.take(index, redis_id)
            with self.lock:
                self.outstanding += 1
            self.cache.append(proxy)
        if int(recorded) > held_before + handed:
            self.check_due = 0.0  # more recorded than held: an earlier fetch's reply was lost
        return bool(self.cache)

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
