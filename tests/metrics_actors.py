"""Actors for the worker-metrics test: one that succeeds, one that always fails (no retries)."""

from __future__ import annotations

import time

from actors import default

QUEUE = "t_metrics"


@default(queue=QUEUE)
def metered_ok(n: int) -> None:
    time.sleep(0.01)


@default(queue=QUEUE, max_retries=0)
def metered_fail(n: int) -> None:
    raise RuntimeError("this one always fails")
