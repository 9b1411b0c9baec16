"""Actors for the chaos suite. Each start and finish is appended to a ledger file, outside
Redis, so that a Redis crash cannot hide a loss: one `write` of one short line with O_APPEND."""

from __future__ import annotations

import os
import time

import redis

from actors import default
from tests.helpers import append_to_ledger

LEDGER = os.environ.get("CHAOS_LEDGER", "/dev/null")


def record(event: str, token: str) -> None:
    append_to_ledger(LEDGER, event, token)


@default(queue="chaos", max_retries=0)
def work(token: str, ms: int) -> None:
    record("start", token)
    time.sleep(ms / 1000)
    record("finish", token)


@default(queue="chaos", max_retries=0)
def poison(token: str) -> None:
    """Kills its worker process, as a segfault or the OOM killer would."""
    record("start", token)
    os._exit(1)


_client: redis.Redis | None = None


@default(queue="chaos", max_retries=50, min_backoff=100, max_backoff=1000)
def write(token: str, ms: int) -> None:
    """What a real actor does: writes to a Redis (the broker's, here), so that its failures
    coincide with the broker's outages. Retried until Redis answers again."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
    record("start", token)
    time.sleep(ms / 1000)
    _client.rpush("chaos:written", token)  # the result, saved at the end as most actors do
    record("finish", token)


@default(queue="chaos", max_retries=50, min_backoff=100, max_backoff=1000)
def write_twice(token: str, ms: int) -> None:
    """Two writes around a short wait, as an actor that claims a row then stores its result."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
    record("start", token)
    _client.hset("chaos:claimed", token, os.getpid())
    time.sleep(ms / 1000)
    _client.rpush("chaos:written", token)
    record("finish", token)
