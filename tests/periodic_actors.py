"""Periodic actors for the periodic tests: each run records its tick in Redis (real work, in the
same Redis as the broker)."""

from __future__ import annotations

import redis
from dramatiq.middleware import CurrentMessage

from actors import background, runtime

QUEUE = "t_periodic"
RAN = "test:periodic:ran"  # list of "actor|tick" of every run


def _ran(actor: str) -> None:
    message = CurrentMessage.get_current_message()
    tick = message.options.get("scheduled_at", "by hand") if message is not None else "?"
    client = redis.Redis.from_url(runtime.settings.redis_url)
    client.rpush(RAN, f"{actor}|{tick}")
    client.close()


@background(queue=QUEUE, periodic="* * * * *")
def every_minute() -> None:
    _ran("every_minute")


@background(queue=QUEUE, periodic="*/5 * * * *", skip_if_running=True)
def every_five_exclusive() -> None:
    _ran("every_five_exclusive")


@background(queue=QUEUE, periodic="@daily", periodic_max_lateness=3600)
def daily() -> None:
    _ran("daily")


@background(queue=QUEUE, periodic="0 0 29 2 *")
def leap_day() -> None:
    _ran("leap_day")
