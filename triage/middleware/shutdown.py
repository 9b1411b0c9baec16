"""Graceful shutdown: one SIGTERM is one request, and unstarted work goes back at once.

Guarantees:
- A SIGTERM repeated within two seconds counts once. Heroku and Render signal every
  process of a dyno at once, and the dramatiq parent forwards its own SIGTERM to each
  worker process: Dramatiq reads that second signal as "kill now" and abandons running
  tasks. A later SIGTERM still kills at once, as Dramatiq intends.
- On shutdown the worker stops fetching and gives back the messages it fetched but has
  not started, to the head of their queue, level and tenant, in order (another worker
  can take them within a round trip); running tasks keep Dramatiq's shutdown grace.
Failure mode: Dramatiq's worker notices SIGTERM within about a second; a give-back that
cannot reach Redis waits in the settle backlog, and the reaper covers a process that dies.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from types import FrameType
from typing import Any

from dramatiq import Broker, Middleware, Worker

from triage.broker.redis_broker import TriageBroker, triage_broker

logger = logging.getLogger(__name__)

DUPLICATE_SIGTERM_WINDOW = 2.0  # seconds


class GracefulShutdown(Middleware):
    """Counts a repeated SIGTERM once, and gives back unstarted messages at shutdown (see above)."""

    def after_process_boot(self, broker: Broker) -> None:
        """Treat a SIGTERM arriving right after another as the same request."""
        if threading.current_thread() is not threading.main_thread():
            return
        original = signal.getsignal(signal.SIGTERM)
        if not callable(original):
            return
        first: list[float] = []

        def once(signum: int, frame: FrameType | None) -> Any:
            now = time.monotonic()
            if first and now - first[0] < DUPLICATE_SIGTERM_WINDOW:
                logger.info(
                    "Second SIGTERM %.2f s after the first: same shutdown, tasks keep their grace.", now - first[0]
                )
                return None
            if not first:
                first.append(now)
            return original(signum, frame)

        signal.signal(signal.SIGTERM, once)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        triage_broker(broker, needed_by=self).draining = False  # a worker started again in this process

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Give back at once what was fetched and not started; running tasks get the grace period."""
        give_back_unstarted(triage_broker(broker, needed_by=self), worker)


def give_back_unstarted(broker: TriageBroker, worker: Worker) -> None:
    """Stop fetching, and give back what the worker fetched and has not started, to the head of
    its queue (its running tasks go on)."""
    broker.draining = True
    by_queue: dict[str, list[Any]] = {}
    while True:
        try:
            item = worker.work_queue.get_nowait()
        except queue.Empty:
            break
        by_queue.setdefault(item.message.queue_name, []).append(item.message)
        worker.work_queue.task_done()
    for queue_name, messages in by_queue.items():
        worker.consumers[queue_name].requeue_messages(messages)
        logger.info("Gave back %d unstarted message(s) of %r.", len(messages), queue_name)
