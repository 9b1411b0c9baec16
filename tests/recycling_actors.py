"""Actors for the worker-process tests (recycling, tuning): each run records which interpreter ran it."""

from __future__ import annotations

import os
import sys
import time
import uuid

import redis

from actors import default
from triage.middleware.recycling import rss_mb

_client = redis.Redis.from_url(os.environ["REDIS_URL"])
RAN = "test:recycling:ran"
BOOT = uuid.uuid4().hex  # one per interpreter: a recycled process imports this module afresh
_leaked: list[bytes] = []


@default(max_retries=0)
def leaky(token: str, leak_kb: int) -> None:
    """Keeps `leak_kb` KiB for ever (written, so resident), then records the run in Redis."""
    _leaked.append(b"\x01" * (leak_kb * 1024))
    time.sleep(0.002)
    _client.rpush(RAN, f"{token} {BOOT} {os.getpid()} {rss_mb():.1f}")


@default
def switch_interval() -> None:
    """Records the interpreter's thread switch interval in this worker process (seconds)."""
    _client.rpush(RAN, f"switch {BOOT} {os.getpid()} {sys.getswitchinterval()}")
