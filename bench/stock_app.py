"""The benchmark actors on stock Dramatiq: RedisBroker with its default middleware and JSON."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from . import _probes

broker = RedisBroker(url=os.environ["REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop() -> None:
    _probes.noop()


@dramatiq.actor(queue_name="bench")
def redis_call() -> None:
    _probes.one_redis_call()


@dramatiq.actor(queue_name="bench", min_backoff=1, max_backoff=10)
def fails_once(token: int) -> None:
    _probes.fail_once(token)


@dramatiq.actor(queue_name="background")
def background_work(ms: float) -> None:
    _probes.sleep_ms(ms)


@dramatiq.actor(queue_name="critical")
def critical_probe(sent_at: float) -> None:
    _probes.record_wait(sent_at, "critical")


@dramatiq.actor(queue_name="bench")
def tenant_job(sent_at: float, label: str, ms: float) -> None:
    if label:
        _probes.record_wait(sent_at, label)
    _probes.sleep_ms(ms)


@dramatiq.actor(queue_name="bench")
def late_probe(due: float, label: str) -> None:
    """A delayed message: how late after its due time it starts."""
    _probes.record_lateness(due, label)


@dramatiq.actor(queue_name="bench", max_retries=1)
def retry_probe(token: str, delay_ms: int, label: str) -> None:
    """Fails its first run with Retry(delay=delay_ms); the retry records how late it started."""
    _probes.retry_after(token, delay_ms, label)


def send(actor: Any, *args: Any, tenant: str | None = None, delay: int | None = None) -> None:
    actor.send_with_options(args=args, delay=delay)  # no tenants in stock Dramatiq


def send_many(actor: Any, argss: list[tuple[Any, ...]], tenant: str | None = None, delay: int | None = None) -> None:
    for args in argss:  # no batch API in stock Dramatiq
        actor.send_with_options(args=args, delay=delay)
