"""Heartbeats: a worker process proves it is alive, and reaps the workers that are not.

Guarantees:
- Before a worker consumes anything it registers in Redis (its queues, pid, host, and
  every queue it declares with its tier, for operator commands) and heartbeats; a thread
  of its own heartbeats every `timeout / 4`, busy or not, and every `timeout / 2` runs
  the reaper (`triage.broker.registry`), so a `kill -9` is recovered
  within timeout + timeout / 2 (+ one heartbeat period).
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
import threading
import time

import redis
from dramatiq import Broker, Middleware, Worker

from triage.broker.redis_broker import TriageBroker, triage_broker

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
        triage.registry.register(self._queues, triage.queue_labels())
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
