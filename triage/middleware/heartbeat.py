"""Heartbeats: a worker process proves it is alive, and reaps the workers that are not.

Guarantees:
- Before a worker consumes anything it registers in Redis (its queues, pid, host, and
  every queue it declares with its tier, for operator commands) and heartbeats; a thread
  of its own heartbeats every `timeout / 4`, busy or not, and every `timeout / 2` runs
  the reaper (`triage.broker.registry`), so a `kill -9` is recovered
  within timeout + timeout / 2 (+ one heartbeat period).
- A worker started while Redis is unreachable waits at boot, before any consumer starts,
  and tries to register again with a capped back-off (0.5 s doubling to 5 s,
  `triage.broker.startup`): one log line per attempt naming where Redis is (no password, no
  traceback). It registers, heartbeats and reaps as soon as Redis answers, and only then
  consumes, so nothing is ever fetched by a worker that the reaper does not know. A SIGTERM
  (or SIGHUP) during that wait ends the process at once (status 0): it holds nothing.
  (Waiting at boot rather than consuming meanwhile: Dramatiq's consumers would log a CRITICAL
  line per queue every 3 s, and could fetch before the worker registered. The cost: the
  `dramatiq` parent waits up to `--worker-fork-timeout`, 30 s, for its worker processes to boot
  before it relays their log lines or acts on a signal sent to it alone, so for that long the
  attempts' lines come out late and such a SIGTERM waits; one sent to every process, as
  platforms send it, stops the worker at once.)
- The same thread applies the settles that waited for Redis during an outage, and records
  the worker's queues again with each reaper pass (a Redis restart without persistence
  or a flush would otherwise hide them from operator commands until the next boot), and
  applies the dead-letter retention of its queues (so that an idle queue is trimmed too).
- At shutdown, once no task is running, the worker first applies the settles still waiting,
  then gives back every message its in-flight records still hold on every queue (and shard)
  it consumed, and deregisters only when those records are empty. Such an entry is a delivery
  that never settled (a settle that could not be written, a fetch whose reply was lost), so
  it goes back as the reaper gives back a dead worker's (`reclaim.lua` on its own id): to the
  head of its level and tenant, its delivery still counted, and dead-lettered as `crash-loop`
  once it reached `max_deliveries`, so that a message whose settle always fails cannot come
  back for ever. (`requeue.lua`, which uncounts the delivery, is for messages known not to
  have started: the consumer's own cache.) If Redis is unreachable then, or anything is left,
  the worker does not deregister, and the reaper of another worker takes over once its
  heartbeat times out (its messages run again, at-least-once). A worker whose tasks outlive
  the shutdown grace does not deregister either: those tasks die with the process, and the
  reaper gives their messages to another worker once its heartbeat times out (they run again).
- Declares the `max_deliveries` actor option: deliveries that killed their worker before
  the message is dead-lettered as `crash-loop` (the broker applies it).
Failure mode: while Redis is unreachable heartbeats fail quietly (one warning) and resume
by themselves; a worker cut off longer than the timeout is presumed dead elsewhere.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import redis
from dramatiq import Broker, Middleware, Worker

from triage.broker.redis_broker import TriageBroker, triage_broker
from triage.broker.startup import until_redis_answers

logger = logging.getLogger(__name__)


class Heartbeats(Middleware):
    """Registers worker processes, heartbeats and reaps on a thread of its own."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queues: list[str] = []

    @property
    def actor_options(self) -> set[str]:
        return {"max_deliveries"}

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        triage = triage_broker(broker, needed_by=self)
        self._queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())

        def register() -> None:
            triage.registry.register(self._queues, triage.queue_labels())

        with _stop_requested() as stopping:
            registered = until_redis_answers(
                register, triage.client, waiting="worker not registered, consuming nothing yet", stop=stopping
            )
        if not registered:
            logger.info("Stopped while waiting for Redis: exiting (nothing was registered or fetched).")
            raise SystemExit(0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(triage,), name="triage-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, broker: TriageBroker) -> None:
        period = max(0.05, broker.heartbeat_timeout_ms / 4000)
        reap_every = max(0.1, broker.heartbeat_timeout_ms / 2000)
        next_reap = time.monotonic()
        failing = False
        while not self._stop.wait(period):
            try:
                broker.registry.beat()
                broker.backlog.flush()
                if time.monotonic() >= next_reap:
                    broker.registry.reap(fallback_queues=broker.get_declared_queues())
                    broker.registry.record_queues(broker.queue_labels())  # again, after a flush or restart
                    for queue_name in broker.get_declared_queues():
                        broker.trim_dead_letters(queue_name)
                    next_reap = time.monotonic() + reap_every
                if failing:
                    logger.info("Redis answers again; heartbeats resumed.")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    logger.warning("Heartbeat failed (%s); retrying every %.1f s.", exc, period)
                failing = True

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        triage = triage_broker(broker, needed_by=self)
        running = _still_running(worker)
        if running:  # past the shutdown grace: they die with the process, their messages are in flight
            logger.warning(
                "%d task(s) still running at shutdown: not deregistering, so that the reaper "
                "gives their messages to another worker once the heartbeat times out.",
                running,
            )
            triage.backlog.flush()
            return
        try:
            if not triage.backlog.flush():
                logger.warning("Settles still waiting for Redis at shutdown: not deregistering; the reaper will.")
                return
            back, quarantined = triage.registry.give_back(self._queues)
            if back or quarantined:
                logger.warning(
                    "At shutdown the in-flight record still held %d message(s) that never settled: "
                    "%d put back in their queue, %d dead-lettered (crash-loop).",
                    back + quarantined,
                    back,
                    quarantined,
                )
            left = triage.registry.in_flight(self._queues)
            if left:
                logger.warning("%d message(s) still in flight at shutdown: not deregistering; the reaper will.", left)
                return
            triage.registry.deregister()
        except redis.RedisError as exc:
            logger.warning("Could not deregister from Redis (%s); the reaper will.", exc)


def _still_running(worker: Worker) -> int:
    """Worker threads still running a task. An idle thread notices the stop within the worker's
    timeout (its wait for work), so the threads still alive after that are busy."""
    deadline = time.monotonic() + worker.worker_timeout / 1000 + 0.1
    for thread in worker.workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in worker.workers)


@contextmanager
def _stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGHUP while the block runs (in the main thread), each signal
    still handed to the handler that was there before (Dramatiq's: it stops the worker process)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {}

    def on_signal(received: int, frame: FrameType | None) -> Any:
        stop.set()
        return previous[received](received, frame)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        handler = signal.getsignal(signum)
        if callable(handler):  # the default action ends the process anyway; an ignored signal stays ignored
            previous[signum] = handler
            signal.signal(signum, on_signal)
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
