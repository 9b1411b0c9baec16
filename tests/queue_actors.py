"""Actors for workers that consume queues on which no actor lives.

This app declares no background actor and no actor on the extra queues of `config.QUEUES`
(`email`, `reports`): it installs the service's configuration without importing `actors/`.
Each actor records `token@queue` in Redis (`test:done`), the queue its message was fetched from.
"""

from __future__ import annotations

import os

import redis
from dramatiq.middleware import CurrentMessage

import config
import middleware
from triage import critical, default, install

install(config=config, middleware=middleware.STACK)
_client = redis.Redis.from_url(os.environ["REDIS_URL"])
DONE = "test:done"


def _record(token: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    _client.rpush(DONE, f"{token}@{message.queue_name}")


@critical(circuit="telegram", on_open="background")
def q_payment(token: str) -> None:
    """A payment: while the breaker is open it moves to `background`, where no actor lives."""
    _record(token)


@default(max_retries=3, min_backoff=10, max_backoff=20, retry_queue="email", retry_queue_after=1)
def q_flaky(token: str) -> None:
    """Fails its first attempt; its retries go to `email`, where no actor lives."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    if not message.options.get("retries"):
        raise RuntimeError("first attempt fails")
    _record(token)


@default
def q_note(token: str) -> None:
    _record(token)
