"""The consumer: blocks while idle, fetches in small batches, settles messages one by one.

Guarantees:
- An idle consumer blocks on its queue's wake-up list (BLPOP) instead of polling; an
  enqueue, a resume or a requeue wakes it within a round trip. It wakes by itself when
  the next delayed message falls due, and at least every `timeout` ms so the worker can
  check for shutdown. No busy loop.
- It holds at most `prefetch` messages (Dramatiq passes twice the worker threads) and
  fetches only when no more than half of that is outstanding: a busy worker keeps about
  one message per thread waiting beyond those running, so urgent messages are not stuck
  behind a hoard in another worker's memory.
- A message that cannot be decoded is dead-lettered at once and the consumer goes on.
- Ack, nack and requeue may be called from any worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from .errors import connection_lost

if TYPE_CHECKING:
    from .redis_broker import TriageBroker

logger = logging.getLogger(__name__)

MAX_DUE_MOVED_PER_FETCH = 1000


class TriageConsumer(Consumer):
    def __init__(self, broker: TriageBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.keys = broker.keys(queue_name)
        self.consumer_id = broker.broker_id
        self.fetch_keys = [*self.keys.block(), self.keys.acks(self.consumer_id)]
        self.settle_keys = self.keys.settle_keys(self.consumer_id)
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

    def __next__(self) -> MessageProxy | None:
        try:
            if self.cache:
                return self.cache.popleft()
            with self.lock:
                outstanding = self.outstanding
            if outstanding > self.low_water:
                self.settled.clear()
                self.settled.wait(self.timeout)
                return None
            if self._fetch(self.prefetch - outstanding):
                return self.cache.popleft()
            self._block()
            return None
        except redis.ConnectionError as exc:
            raise connection_lost(exc) from None

    def _fetch(self, count: int) -> bool:
        pairs, next_eta = self.broker.scripts["fetch"](
            keys=self.fetch_keys, args=[_now_ms(), count, MAX_DUE_MOVED_PER_FETCH]
        )
        self.next_eta = int(next_eta)
        for i in range(0, len(pairs), 2):
            redis_id, payload = pairs[i], pairs[i + 1]
            try:
                proxy = MessageProxy(Message.decode(payload))
            except DecodeError as exc:
                self._dead_letter_undecodable(redis_id, exc)
                continue
            with self.lock:
                self.outstanding += 1
            self.cache.append(proxy)
        return bool(self.cache)

    def _dead_letter_undecodable(self, redis_id: bytes, exc: Exception) -> None:
        logger.error(
            "Message %s on queue %r cannot be decoded (%s); moved to dead letters.",
            redis_id.decode(errors="replace"),
            self.queue_name,
            exc,
        )
        self.broker.scripts["settle"](keys=self.settle_keys, args=["nack", _now_ms(), redis_id])

    def _block(self) -> None:
        wait = self.timeout
        if self.next_eta > 0:
            wait = min(wait, max(0.001, (self.next_eta - _now_ms()) / 1000))
        self.broker.client.blpop([self.keys.wake], timeout=wait)

    def ack(self, message: MessageProxy) -> None:
        self._settle("ack", message)

    def nack(self, message: MessageProxy) -> None:
        self._settle("nack", message)

    def _settle(self, verb: str, message: MessageProxy) -> None:
        try:
            self.broker.scripts["settle"](
                keys=self.settle_keys, args=[verb, _now_ms(), message.options["redis_message_id"]]
            )
        except redis.ConnectionError as exc:
            raise connection_lost(exc) from None
        finally:
            self._release(1)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        ids = [m.options["redis_message_id"] for m in messages]
        if not ids:
            return
        try:
            self.broker.scripts["requeue"](keys=self.fetch_keys, args=ids)
        finally:
            self._release(len(ids))

    def _release(self, count: int) -> None:
        with self.lock:
            self.outstanding = max(0, self.outstanding - count)
        self.settled.set()

    def close(self) -> None:
        cached: list[Any] = list(self.cache)
        self.cache.clear()
        try:
            self.requeue(cached)
        except redis.ConnectionError:
            logger.warning("Could not put %d fetched messages back on %r.", len(cached), self.queue_name)


def _now_ms() -> int:
    return int(time.time() * 1000)
