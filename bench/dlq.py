"""Dead-letter operations at volume: a page of `triage dlq list` and a `summary` over N entries.

The entries are made by the broker's own scripts (fetch, then nack with a reason and an
error), spread over 5 actors, 50 tenants, 3 error types and 3 reasons, each with a 500-byte
traceback. Timings are the median of 5 calls, in ms, from this process to a local Redis.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from dramatiq.message import Message

from triage.admin.dlq import DeadLetters
from triage.admin.dlq_model import Filter
from triage.broker.clock import now_ms
from triage.broker.redis_broker import TriageBroker

QUEUE = "bench"
ERRORS = ("TimeoutError", "ValueError", "ConnectionError")
REASONS = ("exhausted", "dead_on", "crash-loop")


def fill(broker: TriageBroker, n: int) -> None:
    broker.declare_queue(QUEUE)
    for start in range(0, n, 1000):
        broker.enqueue_batch(
            Message(
                queue_name=QUEUE, actor_name=f"actor{i % 5}", args=(i,), kwargs={}, options={"tenant": f"t{i % 50}"}
            )
            for i in range(start, min(n, start + 1000))
        )
    keys = broker.keys(QUEUE)
    fetch_keys, settle_keys = keys.fetch_keys("bench"), keys.settle_keys("bench")
    done = 0
    while done < n:
        # now, max messages, max due moved, then no tenant limits (rpm, burst, max in flight)
        fetched = broker.scripts["fetch"](keys=fetch_keys, args=[now_ms(), 1000, 1000, 0, 0, 0])[0]
        pipe = broker.client.pipeline(transaction=False)
        for i in range(0, len(fetched), 4):  # id, message, deliveries, ready time
            k = done + i // 4
            info = {
                "reason": REASONS[k % 3],
                "queue": QUEUE,
                "error": {"type": ERRORS[k % 3], "message": "it failed", "traceback": "x" * 500},
            }
            args: list[Any] = ["nack", now_ms(), fetched[i], json.dumps(info), 0, 0]
            broker.scripts["settle"](keys=settle_keys, args=args, client=pipe)
        pipe.execute()
        done += len(fetched) // 4


def median_ms(call: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def timings(url: str, n: int) -> dict[str, float]:
    broker = TriageBroker(url=url, middleware=[])
    try:
        fill(broker, n)
        dead = DeadLetters(broker, lambda: {QUEUE: "default"})
        assert broker.client.zcard(broker.keys(QUEUE).dead) == n
        return {
            "page": median_ms(lambda: dead.page(limit=50)),
            "page_actor": median_ms(lambda: dead.page(Filter(actor="actor3"), limit=50)),
            "page_tenant": median_ms(lambda: dead.page(Filter(tenant="t7"), limit=50)),
            "page_two": median_ms(lambda: dead.page(Filter(actor="actor2", error="ValueError"), limit=50)),
            "summary": median_ms(lambda: dead.summary()),
            "summary_since": median_ms(lambda: dead.summary(Filter(since_ms=now_ms() - 3_600_000))),
        }
    finally:
        broker.close()
