"""The one clock of the broker and its scripts: wall-clock milliseconds since the epoch.

Guarantees: every eta, heartbeat, fetch time and dead-letter time is read from `now_ms()`,
so Python and Lua (which gets it as an argument, never from Redis `TIME`) agree.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
