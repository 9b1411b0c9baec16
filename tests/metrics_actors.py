"""Actors for the worker-metrics tests: one that succeeds, one that always fails (no retries),
one that fails once and succeeds its retry."""

from __future__ import annotations

import time

from dramatiq.middleware import CurrentMessage

from actors import default

QUEUE = "t_metrics"


@default(queue=QUEUE)
def metered_ok(n: int) -> None:
    time.sleep(0.01)


@default(queue=QUEUE, max_retries=0)
def metered_fail(n: int) -> None:
    raise RuntimeError("this one always fails")


@default(queue=QUEUE, max_retries=1, min_backoff=10, max_backoff=20)
def metered_flaky(n: int) -> None:
    """Fails its first run, succeeds its retry."""
    message = CurrentMessage.get_current_message()
    if message is not None and not message.options.get("retries"):
        raise RuntimeError("the first run fails")
