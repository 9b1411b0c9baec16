"""Actors for tests that run in a real worker process: each records what it received in Redis."""

from __future__ import annotations

import hashlib
import os

import redis

from actors import background, critical, default

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
