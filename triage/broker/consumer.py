"""The consumer: blocks while idle, fetches in small batches, settles messages one by one.

Guarantees:
- An idle consumer blocks on its queue's wake-up list (BLPOP) instead of polling; an
  enqueue, a resume or a requeue wakes it within a round trip. It wakes by itself when
  the next delayed message falls due, and at least every `timeout` ms so the worker can
  check for shutdown. No busy loop: with nothing due, one call per `timeout`.
- It wakes on time for a delayed message or a retry by its own clock, not Redis's: Redis ends
  a blocked call's timeout only on its server tick (every 1000/hz ms: 100 ms at the default
  `hz 10`), so a BLPOP asked to wait 20 ms can return 190 ms later. The consumer blocks only
  until one tick and `TICK_MARGIN_S` before the due time (the server's `hz` is read once; the
  default when CONFIG is refused); for the rest it checks the wake-up list without blocking
  every `POLL_S` (a new message still wakes it within that) and fetches at the due time. That
  stretch is the only polling, only while a delayed message falls due within it and before
  the consumer's `timeout` (a tenant parked by its limits is waited for on Redis's tick).
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
- A message that cannot be decoded is dead-lettered at once (reason `undecodable`, raw
  bytes kept) and the consumer goes on; a nack records why the message failed (the
  policy's reason, `unknown-actor`, `expired`, else `failed`) with the error type,
  message and a truncated traceback.
- An ack applies the policy's decision (`outcome.py`): a retry or a deferral is stored in
  the same script call that forgets the delivery.
- A delivered message prints as `actor(id=…)`: its arguments stay out of Dramatiq's logs.
- Ack, nack and requeue may be called from any worker thread. When Redis is unreachable
  they do not block or fail the worker thread: they wait in the broker's backlog
  (`backlog.py`) and are applied, in order, as soon as Redis answers again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.encoder import Encoder
from dramatiq.errors import ActorNotFound, DecodeError
from dramatiq.message import Message
from redis.commands.core import Script

from .backlog import SettleBacklog
from .clock import now_ms
from .errors import CONNECTION_ERRORS, connection_lost
from .keys import QueueKeys
from .limits import Limits
from .outcome import outcome_of
from .priority import DEFAULT_PRIORITY

logger = logging.getLogger(__name__)

MAX_DUE_MOVED_PER_FETCH = 1000
TICK_MARGIN_S = 0.05  # how late Redis's tick can come under load, beyond 1/hz
POLL_S = 0.01
DELIVERIES_OPTION = "triage_deliveries"  # where versions before 0.2 kept the count (dropped on re-enqueue)
_DELIVERIES = "_triage_deliveries"  # the proxy's attributes
_READY = "_triage_ready_ms"
TRACEBACK_LIMIT = 2000  # characters of the traceback's tail kept with a dead letter


def failure_info(reason: str, exception: BaseException | None, **extra: Any) -> str:
    """The JSON kept with a dead letter: why, and the last error (type, message, traceback tail)."""
    info: dict[str, Any] = {"reason": reason, **extra}
    if exception is not None:
        trace = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        info["error"] = {
            "type": type(exception).__name__,
            "message": str(exception)[:1000],
            "traceback": trace[-TRACEBACK_LIMIT:],
        }
    return json.dumps(info)


_TICKS: weakref.WeakKeyDictionary[redis.Redis, float] = weakref.WeakKeyDictionary()


def server_tick_s(client: redis.Redis) -> float:
    """Redis's server tick, 1/hz seconds, read once per client (0.1 s, the default, when CONFIG
    GET is refused, as managed services may, or fails)."""
    if client not in _TICKS:
        try:
            config: dict[Any, Any] = client.config_get("hz")
            hz = int(config.get("hz") or config.get(b"hz") or 10)
        except (redis.RedisError, OSError, ValueError):
            hz = 10
        _TICKS[client] = 1 / max(1, hz)
    return _TICKS[client]


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

    def dead_letter_limits(self, queue_name: str) -> tuple[int, int]: ...

    def tenant_defaults(self, queue_name: str) -> Limits: ...

    def keys(self, queue_name: str) -> QueueKeys: ...


class TriageConsumer(Consumer):
    def __init__(self, broker: ConsumerHost, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.keys = broker.keys(queue_name)
        self.consumer_id = broker.broker_id
        self.fetch_keys = self.keys.fetch_keys(self.consumer_id)
        self.settle_keys = self.keys.settle_keys(self.consumer_id)
        self.requeue_keys = self.keys.requeue_keys(self.consumer_id)
        self.limits = broker.tenant_defaults(queue_name)[:3]  # every tenant's (rpm, burst, max in flight)
        self.prefetch = max(1, prefetch)
        self.low_water = max(1, self.prefetch // 2)
        # A blocking wait must end before the client's socket timeout (redis-py's default is 5 s).
        socket_timeout = broker.client.connection_pool.connection_kwargs.get("socket_timeout")
        self.timeout = max(timeout, 10) / 1000
        if socket_timeout:
            self.timeout = min(self.timeout, socket_timeout * 0.8)
        self.cache: deque[MessageProxy] = deque()
        self.outstanding = 0  # fetched and not settled yet, cache included
        self.lock = threading.Lock()
        self.settled = threading.Event()
        self.next_eta = -1
        self.next_due = -1  # the next delayed message's eta (next_eta may be a parked tenant's time)
        self.stretch = server_tick_s(broker.client) + TICK_MARGIN_S
        self.suspect: str | None = None  # a message reclaimed from a dead worker, being run alone

    def __next__(self) -> MessageProxy | None:
        try:
            if self.broker.draining:  # shutting down: hand out nothing more; close() gives the cache back
                time.sleep(min(self.timeout, 0.1))
                return None
            if self.cache:
                return self.cache.popleft()
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

    def _fetch(self, count: int) -> bool:
        fetched, next_eta, suspect, next_due = self.broker.scripts["fetch"](
            keys=self.fetch_keys, args=[now_ms(), count, MAX_DUE_MOVED_PER_FETCH, *self.limits]
        )
        self.next_eta, self.next_due = int(next_eta), int(next_due)
        if suspect:
            self.suspect = fetched[-4].decode()
        for i in range(0, len(fetched), 4):
            redis_id, payload, deliveries, ready = fetched[i : i + 4]
            try:
                proxy = TriageMessageProxy(self._decode(payload))
            except DecodeError as exc:
                self._dead_letter_undecodable(redis_id, exc)
                continue
            proxy.__dict__[_DELIVERIES] = int(deliveries)
            proxy.__dict__[_READY] = int(ready)
            with self.lock:
                self.outstanding += 1
            self.cache.append(proxy)
        return bool(self.cache)

    def _decode(self, payload: bytes) -> Message[Any]:
        """`Message.decode` with this broker's encoder rather than Dramatiq's global one."""
        try:
            fields = self.broker.encoder.decode(payload)
            fields["args"] = tuple(fields["args"])
            return Message(**fields)
        except Exception as exc:
            raise DecodeError("Failed to decode message.", payload, exc) from exc  # type: ignore[no-untyped-call]

    def _dead_letter_undecodable(self, redis_id: bytes, exc: DecodeError) -> None:
        logger.error(
            "Message %s on queue %r cannot be decoded (%s); moved to the dead letters.",
            redis_id.decode(errors="replace"),
            self.queue_name,
            exc.__cause__ or exc,
        )
        args = self._nack_args(redis_id, "undecodable", exc.__cause__ or exc)
        self.broker.backlog.run("settle", self.settle_keys, args)

    def _block(self) -> None:
        """Wait for a wake-up token, the next due time, or `timeout`, whichever comes first."""
        client, wake, now = self.broker.client, self.keys.wake, now_ms()
        wait = self.timeout
        if self.next_eta > 0:
            wait = min(wait, max(0.001, (self.next_eta - now) / 1000))
        due_in = (self.next_due - now) / 1000 if self.next_due > 0 else wait + 1
        if due_in > wait:  # the timeout or a parked tenant comes first: Redis's tick will do
            client.blpop([wake], timeout=wait)
            return
        if due_in > self.stretch:  # block until shortly before it is due; a token wakes it sooner
            if client.blpop([wake], timeout=due_in - self.stretch) is not None:
                return
            due_in = (self.next_due - now_ms()) / 1000
        deadline = time.monotonic() + max(0.001, due_in)
        while (left := deadline - time.monotonic()) > 0:
            if client.lpop(wake) is not None:
                return
            time.sleep(min(POLL_S, left))

    def ack(self, message: MessageProxy) -> None:
        """Forget the delivery; or, when a policy decided so, retry or defer it in the same call."""
        redis_id = message.options["redis_message_id"]
        outcome = outcome_of(message)
        if outcome is None or outcome.kind == "ack":
            self._settle("settle", self.settle_keys, ["ack", now_ms(), redis_id], redis_id)
        elif outcome.kind == "dead":  # decided dead but not failed: dead-letter it all the same
            self.nack(message)
        elif outcome.kind == "defer":
            now = now_ms()
            level = message.options.get("priority", DEFAULT_PRIORITY)
            tenant = message.options.get("tenant") or ""
            args = ["defer", now, redis_id, "", "", level, tenant, now + outcome.delay_ms, 0]
            self._settle_retry(message, self.keys.retry_keys(self.keys, self.consumer_id), args)
        else:
            placed = outcome.placed
            assert placed is not None
            target = self.broker.keys(placed.message.queue_name)
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
            self._settle_retry(message, target.retry_keys(self.keys, self.consumer_id), args)

    def _settle_retry(self, message: MessageProxy, keys: list[str], args: list[Any]) -> None:
        """Run retry.lua; if Redis refuses it (not unreachable: an error of the script or of the
        keys, such as a retry queue in another cluster slot), dead-letter the message instead
        (reason `retry-failed`) rather than leave it in flight for good."""
        try:
            self.broker.backlog.run("retry", keys, args)
        except redis.ResponseError as exc:
            logger.error("Retry of message %s refused by Redis (%s); dead-lettered instead.", message, exc)
            self._nack(message, "retry-failed", exc)  # releases it
            return
        except BaseException:
            self._release([message.options["redis_message_id"]])
            raise
        self._release([message.options["redis_message_id"]])

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
        redis_id = message.options["redis_message_id"]
        args = self._nack_args(redis_id, reason, exception, actor=message.actor_name)
        self._settle("settle", self.settle_keys, args, redis_id)

    def _nack_args(self, redis_id: Any, reason: str, exception: BaseException | None, **extra: Any) -> list[Any]:
        """settle.lua's arguments for a nack: why, the last error, the queue's retention."""
        info = failure_info(reason, exception, queue=self.queue_name, **extra)
        return ["nack", now_ms(), redis_id, info, *self.broker.dead_letter_limits(self.queue_name)]

    def _settle(self, script: str, keys: list[str], args: list[Any], redis_id: str) -> None:
        try:
            self.broker.backlog.run(script, keys, args)
        finally:
            self._release([redis_id])

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        ids = [m.options["redis_message_id"] for m in messages]
        if not ids:
            return
        try:
            self.broker.backlog.run("requeue", self.requeue_keys, ids)
        finally:
            self._release(ids)

    def _release(self, ids: list[str]) -> None:
        with self.lock:
            self.outstanding = max(0, self.outstanding - len(ids))
            if self.suspect in ids:
                self.suspect = None
        self.settled.set()

    def close(self) -> None:
        cached: list[Any] = list(self.cache)
        self.cache.clear()
        self.requeue(cached)
