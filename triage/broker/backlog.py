"""The settle backlog: acks, nacks and requeues that could not reach Redis, kept in order.

Guarantees:
- `run()` applies a settle script at once when Redis answers and nothing is waiting
  before it; otherwise it keeps the call, so a worker thread never blocks or fails on an
  ack during a Redis outage.
- `flush()` applies what is kept, oldest first, stopping at the first connection error:
  the order of settles is the order in which workers made them.
Failure mode: kept settles live in this process's memory; if the process dies before
Redis answers again, the reaper takes its in-flight messages back (they run again).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from redis.commands.core import Script

from .errors import CONNECTION_ERRORS

logger = logging.getLogger(__name__)


class SettleBacklog:
    """Acks, nacks and requeues that could not reach Redis, applied in order once it answers."""

    def __init__(self, scripts: Mapping[str, Script]) -> None:
        self.scripts = scripts
        self.pending: deque[tuple[str, list[str], list[Any]]] = deque()
        self.lock = threading.Lock()

    def run(self, script: str, keys: list[str], args: list[Any]) -> None:
        """Run the script now if Redis answers (and nothing is waiting before it), else keep it for later."""
        if self.pending and not self.flush():
            self._keep(script, keys, args)
            return
        try:
            self.scripts[script](keys=keys, args=args)
        except CONNECTION_ERRORS as exc:
            logger.warning("Redis unreachable (%s): %s kept until it answers again.", exc, script)
            self._keep(script, keys, args)

    def _keep(self, script: str, keys: list[str], args: list[Any]) -> None:
        with self.lock:
            self.pending.append((script, keys, args))

    def flush(self) -> bool:
        """Apply what is waiting; True when nothing is left."""
        with self.lock:
            while self.pending:
                script, keys, args = self.pending[0]
                try:
                    self.scripts[script](keys=keys, args=args)
                except CONNECTION_ERRORS:
                    return False
                self.pending.popleft()
            return True
