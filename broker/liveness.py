"""Worker liveness: heartbeats, the reaper, and a prompt give-back at shutdown.

The life of a worker process, in plain words: before it consumes anything it registers
(`{ns}:workers`: its queues, pid and host) and heartbeats (`{ns}:heartbeats`, a sorted set
by time). A thread of its own heartbeats every `timeout / 4`, whether or not the worker is
busy, and every `timeout / 2` runs the reaper: any worker whose heartbeat is older than
the timeout is presumed dead, and its in-flight messages on each of its queues are taken
back atomically (`reclaim.lua`), keeping their priority and tenant. So a `kill -9` is
recovered within timeout + timeout / 2 (+ one heartbeat period). Reaping is idempotent:
two reapers racing reclaim each message once.

A SIGTERM repeated within two seconds (a platform signals every process of a dyno, and the
dramatiq parent forwards it again) counts once, so running tasks keep their grace period.
On SIGTERM the worker gives back at once the messages it fetched but has not started,
to the head of their queue, while its running tasks get the shutdown grace; it then
deregisters.

Failure mode: a worker cut off from Redis for longer than the timeout is presumed dead;
its messages are redelivered elsewhere and may run twice (delivery is at-least-once).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis
from dramatiq import Broker, Middleware, Worker

if TYPE_CHECKING:
    from .redis_broker import TriageBroker

logger = logging.getLogger(__name__)

DUPLICATE_SIGTERM_WINDOW = 2.0  # seconds


class WorkerRegistry:
    """The registry of live workers in Redis, and the reaper of dead ones."""

    def __init__(self, broker: TriageBroker, *, max_deliveries: Callable[[str], int]) -> None:
        self.broker = broker
        self.max_deliveries = max_deliveries
        self.heartbeats = f"{broker.namespace}:heartbeats"
        self.workers = f"{broker.namespace}:workers"

    def register(self, queues: list[str]) -> None:
        info = {"queues": queues, "pid": os.getpid(), "host": socket.gethostname(), "started_ms": _now_ms()}
        pipe = self.broker.client.pipeline(transaction=False)
        pipe.hset(self.workers, self.broker.broker_id, json.dumps(info))
        pipe.zadd(self.heartbeats, {self.broker.broker_id: _now_ms()})
        pipe.execute()

    def beat(self) -> None:
        self.broker.client.zadd(self.heartbeats, {self.broker.broker_id: _now_ms()})

    def deregister(self) -> None:
        pipe = self.broker.client.pipeline(transaction=False)
        pipe.zrem(self.heartbeats, self.broker.broker_id)
        pipe.hdel(self.workers, self.broker.broker_id)
        pipe.execute()

    def reap(self) -> tuple[int, int]:
        """Reclaim the in-flight messages of every worker presumed dead: (put back, quarantined)."""
        client = self.broker.client
        now = _now_ms()
        dead: list[Any] = client.zrangebyscore(self.heartbeats, "-inf", now - self.broker.heartbeat_timeout_ms)
        back = quarantined = 0
        for raw in dead:
            worker_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if worker_id == self.broker.broker_id:
                continue  # this process is alive: it is running this code
            info = client.hget(self.workers, worker_id)
            queues = json.loads(info)["queues"] if info else sorted(self.broker.get_declared_queues())
            worker_back = worker_quarantined = 0
            for queue_name in queues:
                keys = self.broker.keys(queue_name)
                put_back, dead_lettered = self.broker.scripts["reclaim"](
                    keys=keys.reclaim_keys(worker_id), args=[now, self.max_deliveries(queue_name), worker_id]
                )
                worker_back, worker_quarantined = worker_back + put_back, worker_quarantined + dead_lettered
            pipe = client.pipeline(transaction=False)
            pipe.zrem(self.heartbeats, worker_id)
            pipe.hdel(self.workers, worker_id)
            pipe.execute()
            logger.warning(
                "Worker %s presumed dead (no heartbeat for %d ms): reclaimed %d message(s), quarantined %d.",
                worker_id,
                self.broker.heartbeat_timeout_ms,
                worker_back,
                worker_quarantined,
            )
            back, quarantined = back + worker_back, quarantined + worker_quarantined
        return back, quarantined


class Liveness(Middleware):
    """Registers worker processes, heartbeats and reaps on a thread of its own."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def actor_options(self) -> set[str]:
        return {"max_deliveries"}

    def after_process_boot(self, broker: Broker) -> None:
        """Treat a SIGTERM arriving right after another as the same request.

        Heroku and Render signal every process of a dyno at once, and the dramatiq parent
        forwards its own SIGTERM to each worker process: Dramatiq reads that second signal as
        "kill now" and abandons running tasks. A repeat within DUPLICATE_SIGTERM_WINDOW
        seconds is ignored; a later one still kills at once, as Dramatiq intends.
        """
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
        triage = _triage(broker)
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        triage.registry.register(queues)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(triage,), name="triage-liveness", daemon=True)
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
                    broker.registry.reap()
                    next_reap = time.monotonic() + reap_every
                if failing:
                    logger.info("Redis answers again; heartbeats resumed.")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    logger.warning("Heartbeat failed (%s); retrying every %.1f s.", exc, period)
                failing = True

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Give back at once what was fetched and not started; running tasks get the grace period."""
        _triage(broker).draining = True
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

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        triage = _triage(broker)
        try:
            triage.backlog.flush()
            triage.registry.deregister()
        except redis.RedisError as exc:
            logger.warning("Could not deregister from Redis (%s); the reaper will.", exc)


def _triage(broker: Broker) -> TriageBroker:
    from .redis_broker import TriageBroker

    if not isinstance(broker, TriageBroker):
        raise TypeError("the Liveness middleware needs the Triage broker")
    return broker


def _now_ms() -> int:
    return int(time.time() * 1000)
