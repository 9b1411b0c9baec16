"""A sharded queue on one Redis: an idle consumer wakes for a message in any shard (each shard's
wake-up list watched while it is idle), and its watchers stop with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from triage.broker.delivery import shard_of
from triage.broker.redis_broker import TriageBroker


@pytest.fixture
def broker(redis_url: str, r: redis.Redis) -> Iterator[TriageBroker]:
    made = TriageBroker(url=redis_url, namespace="sh", middleware=[], shards=lambda queue: 3)
    yield made
    made.close()


def test_an_idle_consumer_wakes_for_a_message_in_any_shard(broker: TriageBroker) -> None:
    # Given a consumer of a three-shard queue, idle, that waits up to 5 s per call
    consumer = broker.consume("events", prefetch=1, timeout=5000)
    received: list[tuple[float, Any]] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set() and len(received) < 3:
            message = next(consumer)
            if message is not None:
                received.append((time.monotonic(), message))
                consumer.ack(message)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        time.sleep(0.5)  # it is blocked now
        # When one message lands in each shard, one at a time
        sent_at = []
        for i in range(3):
            sent_at.append(time.monotonic())
            broker.enqueue(Message("events", "job", (i,), {}, {}))
            deadline = time.monotonic() + 4
            while len(received) <= i and time.monotonic() < deadline:
                time.sleep(0.01)
        # Then each is handed out well within the consumer's 5 s wait: a token woke it
        assert [shard_of(m) for _, m in received] == [0, 1, 2]
        assert all(got - sent < 4 for (got, _), sent in zip(received, sent_at, strict=True))
    finally:
        stop.set()
        thread.join(10)
    # And closing the consumer stops its watchers (within one wait)
    assert consumer.waker is not None
    consumer.close()
    for watcher in consumer.waker.threads:
        watcher.join(6)
        assert not watcher.is_alive()


def test_stats_and_pause_cover_every_shard_on_one_redis(broker: TriageBroker) -> None:
    broker.enqueue_batch([Message("events", "job", (i,), {}, {}) for i in range(6)])
    assert broker.counts("events") == (6, 0, 0)
    broker.pause("events")
    consumer = broker.consume("events", prefetch=10, timeout=100)
    assert not consumer._fetch(10)
    broker.resume("events")
    taken = 0
    while consumer._fetch(10):
        taken += len(consumer.cache)
        consumer.cache.clear()
    assert taken == 6
