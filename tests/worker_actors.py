"""Actors for tests that run in a real worker process: each records what it received in Redis."""

from __future__ import annotations

import hashlib
import json
import os
import time

import redis
from dramatiq.middleware import CurrentMessage

from actors import background, critical, default
from triage import Defer, delivery_count

_client = redis.Redis.from_url(os.environ["REDIS_URL"])
DONE = "test:done"


@critical
def record_critical(token: str) -> None:
    _client.rpush(DONE, f"critical:{token}")


@default
def record_default(token: str) -> None:
    _client.rpush(DONE, f"default:{token}")


@background
def record_background(token: str) -> None:
    _client.rpush(DONE, f"background:{token}")


@default
def digest(blob: str) -> None:
    _client.rpush(DONE, f"digest:{len(blob)}:{hashlib.sha256(blob.encode()).hexdigest()}")


@critical(max_retries=0)
def always_fails(token: str) -> None:
    raise RuntimeError(f"deliberate failure {token}")


@default
def wait_for_release(token: str) -> None:
    """Runs until the test pushes to `test:release` (at most 30 s)."""
    _client.rpush(DONE, f"started:{token}")
    _client.blpop(["test:release"], timeout=30)


@default(queue="t_order")
def record_order(token: str) -> None:
    """Records the order in which a worker runs messages (tests pause the queue, fill it, resume)."""
    _client.rpush(DONE, token)


@critical
def parent_sends_children(token: str) -> None:
    record_placement.send(f"{token}:inherited")
    record_placement.send_with_options(args=(f"{token}:own",), priority=3, tenant="own-tenant")


@background
def record_placement(token: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    options = message.options
    _client.rpush(DONE, json.dumps([token, options.get("priority"), options.get("tenant")]))


@default(max_retries=3, min_backoff=10, max_backoff=50)
def flaky(token: str, failures: int) -> None:
    attempt = _client.incr(f"test:attempts:{token}")
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    _client.rpush(DONE, f"flaky:{token}:{attempt}")


@default
def add(x: int, y: int) -> int:
    return x + y


@default(store_results=True)
def multiply(x: int, y: int) -> int:
    return x * y


@default
def record_value(value: int) -> None:
    _client.rpush(DONE, f"value:{value}")


@default
def group_done() -> None:
    _client.rpush(DONE, "group-done")


@default(queue="t_slow")
def sleepy(token: str, ms: int) -> None:
    _client.rpush(DONE, f"start:{token}")
    time.sleep(ms / 1000)
    _client.rpush(DONE, f"finish:{token}")


@default(max_retries=0)
def fails_with_secret(card_number: str) -> None:
    raise RuntimeError("card declined")


@critical(max_retries=2, min_backoff=10, max_backoff=20)
def fails_twice_then_dies(token: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    _client.rpush(DONE, f"attempt:{token}:{message.options.get('retries', 0)}")
    raise RuntimeError(f"boom {token}")


@default(dead_on=(ValueError,), max_retries=5, min_backoff=10)
def dies_on_value_error(token: str) -> None:
    _client.rpush(DONE, f"attempt:{token}")
    raise ValueError(f"bad input {token}")


@critical(max_retries=3, min_backoff=10, max_backoff=20, retry_queue="default", retry_queue_after=2)
def demoted(token: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    _client.rpush(DONE, f"{token}:{message.queue_name}:{message.options.get('retries', 0)}")
    if message.options.get("retries", 0) < 3:
        raise RuntimeError("not yet")


@default(max_retries=0)
def defers_once(token: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    if _client.incr(f"test:deferrals:{token}") == 1:
        raise Defer(delay_ms=50)
    options = message.options
    _client.rpush(DONE, json.dumps([token, options.get("retries", 0), delivery_count(message)]))
