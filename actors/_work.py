"""Simulated work for the example domains: sleeps for a bounded, random time."""

from __future__ import annotations

import random
import time


def simulate(min_ms: float, max_ms: float) -> float:
    """Sleep between `min_ms` and `max_ms` milliseconds; return the time slept in ms."""
    ms = random.uniform(min_ms, max_ms)
    time.sleep(ms / 1000)
    return ms
