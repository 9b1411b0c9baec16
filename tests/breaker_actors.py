"""Actors that call a real HTTP dependency through the `telegram` breaker, for worker processes.

Each records the token it delivered in Redis (`test:done`) once the call succeeded."""

from __future__ import annotations

import os
import urllib.request

import redis

import triage
from actors import default

_client = redis.Redis.from_url(os.environ["REDIS_URL"])
DONE = "test:done"
TIMEOUT_S = 2.0


def _call(token: str) -> None:
    url = os.environ.get("TEST_DOWNSTREAM_URL", "http://127.0.0.1:1")
    with urllib.request.urlopen(f"{url}/send?token={token}", timeout=TIMEOUT_S) as response:  # noqa: S310 - http only
        response.read()
    _client.rpush(DONE, token)


@default(circuit="telegram", max_retries=20, min_backoff=200, max_backoff=1000)
def call_telegram(token: str) -> None:
    _call(token)


@default(circuit="telegram", on_open="background")
def demoted_when_open(token: str) -> None:
    _call(token)


@default(circuit="telegram", on_open="dead_letter")
def dead_when_open(token: str) -> None:
    _call(token)


@default(circuit="telegram", on_open="drop")
def dropped_when_open(token: str) -> None:
    _call(token)


@default(queue="telegram_outbox", circuit="telegram", pause_queue_on_open=True)
def paused_when_open(token: str) -> None:
    _call(token)


@default(max_retries=20, min_backoff=200, max_backoff=1000)
def guarded_call(token: str) -> None:
    """The breaker around the call only (no `circuit=`): an open breaker raises CircuitOpen here."""
    with triage.breaker("telegram"):
        _call(token)
