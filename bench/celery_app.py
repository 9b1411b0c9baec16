"""The benchmark actors on Celery, run the way its users' documents run it: the Redis broker,
`acks_late`, a prefetch multiplier of 4, one queue per tier (`-Q critical`), JSON, no results.

Workers: `celery -A bench.celery_app worker -Q QUEUES --pool threads --concurrency 8`, one
per process the other brokers run (bench/targets.py starts them).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from . import _probes

app = Celery("bench", broker=os.environ["REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop", queue="bench")
def noop() -> None:
    _probes.noop()


@app.task(name="redis_call", queue="bench")
def redis_call() -> None:
    _probes.one_redis_call()


@app.task(name="background_work", queue="background")
def background_work(ms: float) -> None:
    _probes.sleep_ms(ms)


@app.task(name="critical_probe", queue="critical")
def critical_probe(sent_at: float) -> None:
    _probes.record_wait(sent_at, "critical")


def send(actor: Any, *args: Any, tenant: str | None = None, delay: int | None = None) -> None:
    actor.apply_async(args=args, countdown=delay / 1000 if delay else None)  # no tenants in Celery


def send_many(actor: Any, argss: list[tuple[Any, ...]], tenant: str | None = None, delay: int | None = None) -> None:
    for args in argss:  # no batch API in Celery
        send(actor, *args, delay=delay)
