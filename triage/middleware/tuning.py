"""Worker-process tuning: how often the interpreter hands the GIL from one thread to another.

Guarantees: with `TRIAGE_SWITCH_INTERVAL_MS` set, each `dramatiq` worker process sets it
(`sys.setswitchinterval`) at boot, before its threads start; producers and other processes keep
Python's default (5 ms). A thread that wakes (a fetched critical message, a settle's reply)
may wait up to that interval for the running thread to give up the GIL; a shorter one can cut
that wait for CPU-bound actors, at the cost of more switches. Measured on the benchmark's
flood (docs/benchmarks.md): no gain at 1 or 0.5 ms, so the default stays Python's.
"""

from __future__ import annotations

import logging
import sys

from dramatiq import Broker, Middleware

logger = logging.getLogger(__name__)


class ProcessTuning(Middleware):
    """Sets the worker process's switch interval at boot (see the module's docstring).

    `switch_interval_ms`: the interval in milliseconds (None: leave Python's).
    """

    def __init__(self, *, switch_interval_ms: float | None = None) -> None:
        self.switch_interval_ms = switch_interval_ms

    def after_process_boot(self, broker: Broker) -> None:
        if self.switch_interval_ms is not None:
            sys.setswitchinterval(self.switch_interval_ms / 1000)
            logger.debug("Switch interval: %.3f ms.", self.switch_interval_ms)
