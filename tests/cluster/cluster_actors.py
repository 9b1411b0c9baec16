"""Actors for the cluster suite, run by real `dramatiq` workers on a Redis Cluster
(`REDIS_URL=redis+cluster://...`, `TRIAGE_QUEUES` gives queue `hot` three shards).

Each start and finish is appended to a ledger file outside Redis (one short O_APPEND write), so
that a node's restart cannot hide a loss; `write` also writes to the cluster, as real actors do,
so its failures coincide with the broker's."""

from __future__ import annotations

import os

import redis

from actors import default
from tests.helpers import append_to_ledger
from triage.broker.connection import client_from_url

LEDGER = os.environ.get("CLUSTER_LEDGER", "/dev/null")
_client: redis.Redis | None = None


def record(event: str, token: str) -> None:
    append_to_ledger(LEDGER, event, token)


@default(queue="hot", max_retries=100, min_backoff=100, max_backoff=1000)
def write(token: str) -> None:
    """Writes its token to the cluster (a key of its own slot), then records its finish."""
    global _client
    if _client is None:
        _client = client_from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
    record("start", token)
    _client.set(f"written:{token}", "1")
    record("finish", token)


@default(max_retries=100, min_backoff=100, max_backoff=1000)
def note(token: str) -> None:
    """The same on the default tier's queue (unsharded)."""
    write.fn(token)


@default(store_results=True)
def double(x: int) -> int:
    return 2 * x


@default
def collect(token: str) -> None:
    """A group's completion callback: records that it ran."""
    record("finish", token)


@default(queue="hot", rate_limit="2000/s", rate_burst=50, concurrency=3, circuit="telegram")
def guarded(token: str) -> None:
    """Behind a fleet-wide rate limit, a concurrency limit and a circuit breaker (their scripts
    run on the cluster), writing its token as `write` does."""
    write.fn(token)


@default(periodic="*/5 * * * *")
def tick() -> None:
    """A periodic job: the producer sends its ticks as a scheduler does."""
    record("finish", "tick")


@default(queue="hot", max_retries=100, min_backoff=100, max_backoff=1000)
def push(token: str, key: str) -> None:
    """Claims its token in a hash, then appends it to a list: two writes to `key`'s slot (the test
    puts it on the master it kills), retried while that slot has no master."""
    global _client
    if _client is None:
        _client = client_from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
    record("start", token)
    _client.hset(f"{key}:claimed", token, os.getpid())
    _client.rpush(key, token)
    record("finish", token)
