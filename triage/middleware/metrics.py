"""Worker metrics for Prometheus: what each worker process ran, how long it waited and ran.

Guarantees:
- prometheus-client's multiprocess mode, one directory per `dramatiq` master, served by one
  exposition process per master on `TRIAGE_METRICS_PORT` (`metrics_exposition.py`); port 0
  (the default) serves nothing and writes no files.
- Names: `triage_messages_total{queue,tier,actor,outcome}` (outcome: done, failed, retried,
  deferred, moved, dead, dropped, skipped), `triage_message_wait_seconds{queue,tier}` (from the
  time the message became ready to run, its enqueue or its eta (`ready_at_ms`), to the start of
  its run by this process's clock; a delay is not a wait, nor is the hold of load shedding or
  of a tenant's admission, which gives the message an eta; not for a retry,
  whose wait is its backoff, nor for a redelivery after a crash), `triage_message_run_seconds
  {queue,tier}` (runs only: not skipped, deferred or moved messages), and
  `triage_messages_in_progress{queue,tier}`.
  Buckets reach an hour (the background tier's SLA is 5 min). Labels are bounded: never
  arguments, hostnames or pids.
- It is first in the stack, so that its after-hooks run last and see how the other policies
  settled each message (retry, deferral, dead letter).
- The last hour in Redis (`triage.broker.hourly`, on unless `TRIAGE_HOURLY_STATS=false`, with
  or without a port): the same tallies are added to per-minute buckets of each queue, one
  pipelined round trip per process per second, in the minute they happened. What cannot be
  written because Redis is unreachable is kept for later (minutes older than the hour are
  dropped); what Redis refuses is dropped with a warning. `failed` counts runs that failed
  for good (dead-lettered, or failed with no retry); `retried` the runs retried. Dead letters
  made outside a worker's hooks (the reaper's crash-loop quarantine) are not in the hour.
- `triage_worker_threads`: the worker threads of the master's processes (utilisation is the run
  time's rate over it).
- Cost: a message only updates this process's own tallies (plain counters under a lock); a
  thread adds them to the multiprocess files and to Redis once a second (and at shutdown), so
  a scrape is at most about a second behind.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import redis
from dramatiq import Broker, Middleware

from triage.broker.connection import is_cluster
from triage.broker.delivery import delivery_count, ready_at_ms
from triage.broker.hourly import BUCKETS, MINUTES, WAIT_FIELDS, Tally, current_minute, record
from triage.broker.keys import QueueKeys
from triage.broker.outcome import outcome_of

from .metrics_exposition import master_dir, remove_stale, serve_worker_metrics

_STARTED = "_triage_started"
OUTCOMES = {"retry": "retried", "defer": "deferred", "move": "moved", "dead": "dead", "ack": "dropped"}
# How an outcome counts in the last hour's buckets (outcomes not named are not counted there).
HOURLY = {"done": ("done",), "failed": ("failed",), "retried": ("retried",), "dead": ("failed", "dead")}
NOT_RUN = ("deferred", "moved", "dropped", "skipped")  # settled before the actor ran: no run time
logger = logging.getLogger(__name__)


class WorkerMetrics(Middleware):
    """Per-process counters and histograms, merged across a master's processes, and the last
    hour's buckets in Redis.

    Parameters:
      port: the exposition port (0: no Prometheus metrics).
      host: the address it binds.
      tier_of: a queue's tier name.
      hourly: keep the last hour's figures in Redis (needs a Triage broker).
    """

    def __init__(self, *, port: int, host: str, tier_of: Callable[[str], str], hourly: bool = True) -> None:
        self.port, self.host, self.tier_of, self.hourly = port, host, tier_of, hourly
        self.enabled = port > 0
        self._metrics: Any = None
        self._store: tuple[redis.Redis, Callable[[str], QueueKeys]] | None = None
        self._tallying = False
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()  # (queue, actor, outcome) -> runs
        self._histograms: dict[tuple[int, str], list[float]] = {}  # (0 wait | 1 run, queue) -> per bucket, then sum
        self._running: Counter[str] = Counter()  # queue -> running now
        self._unwritten: dict[int, Tally] = {}  # minute -> the last hour's tallies not yet in Redis
        self._stop = threading.Event()
        self._flushing = threading.Lock()  # one flush at a time (the thread's, the shutdown's)
        self._write_failed = False

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_worker_metrics] if self.enabled else []

    def after_process_boot(self, broker: Broker) -> None:
        client, keys = getattr(broker, "client", None), getattr(broker, "keys", None)
        # The Triage broker's client: a Redis, or a cluster client (which is not a redis.Redis).
        if self.hourly and (isinstance(client, redis.Redis) or is_cluster(client)) and callable(keys):
            self._store = (cast(redis.Redis, client), keys)
        if self.enabled:
            self._metrics = self._prometheus_metrics()
        self._tallying = self._metrics is not None or self._store is not None
        if self._tallying:
            threading.Thread(target=self._flush_every_second, name="triage-metrics", daemon=True).start()

    def _prometheus_metrics(self) -> Any:
        directory = master_dir(os.getppid())
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        import prometheus_client as prom  # after the variable is set: multiprocess values

        labels = ["queue", "tier"]
        return (
            prom.Counter("triage_messages", "Messages run, by outcome.", [*labels, "actor", "outcome"]),
            prom.Histogram("triage_message_wait_seconds", "Ready to start.", labels, buckets=BUCKETS),
            prom.Histogram("triage_message_run_seconds", "Run time.", labels, buckets=BUCKETS),
            prom.Gauge("triage_messages_in_progress", "Messages running.", labels, multiprocess_mode="livesum"),
            prom.Gauge("triage_worker_threads", "Worker threads.", multiprocess_mode="livesum"),
        )

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if self._metrics is not None:
            self._metrics[4].set(worker.worker_threads)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if not self._tallying:
            return
        self._stop.set()
        if self._flushing.acquire(timeout=5):  # not held up by a flush stuck on a stalled Redis
            try:
                self._flush()
            finally:
                self._flushing.release()
        if self._metrics is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), os.environ["PROMETHEUS_MULTIPROC_DIR"])  # type: ignore[no-untyped-call]

    def before_process_message(self, broker: Broker, message: Any) -> None:
        if not self._tallying:
            return
        queue, options = message.queue_name, message.options
        first_run = not options.get("retries") and delivery_count(message) <= 1
        with self._lock:
            if first_run:  # waiting since it was ready to run: its send, or its eta (a delayed or deferred message)
                due = (ready_at_ms(message) or max(message.message_timestamp, options.get("eta") or 0)) / 1000
                self._observe(0, queue, max(0.0, time.time() - due))
            self._running[queue] += 1
        message.__dict__[_STARTED] = time.monotonic()

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._finish(message, "failed" if exception is not None else "done")

    def after_skip_message(self, broker: Broker, message: Any) -> None:
        self._finish(message, "skipped")

    def _finish(self, message: Any, plain: str) -> None:
        started = message.__dict__.pop(_STARTED, None)
        if started is None:
            return
        outcome = outcome_of(message)
        name = OUTCOMES[outcome.kind] if outcome is not None else plain
        queue = message.queue_name
        with self._lock:
            self._running[queue] -= 1
            if name not in NOT_RUN:
                self._observe(1, queue, time.monotonic() - started)
            self._counts[queue, message.actor_name, name] += 1

    def _observe(self, kind: int, queue: str, seconds: float) -> None:
        """Tally one observation (the caller holds the lock)."""
        tally = self._histograms.get((kind, queue))
        if tally is None:
            tally = self._histograms[kind, queue] = [0.0] * (len(BUCKETS) + 2)
        tally[bisect.bisect_left(BUCKETS, seconds)] += 1  # the first bucket whose bound is >= it (+Inf last)
        tally[-1] += seconds

    def _flush_every_second(self) -> None:
        while not self._stop.wait(1.0):
            self.flush()

    def flush(self) -> None:
        """Add this process's tallies to its multiprocess files and to the last hour in Redis."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            counts, histograms, running = self._counts, self._histograms, dict(self._running)
            self._counts, self._histograms = Counter(), {}
        if self._metrics is not None:
            self._write_prometheus(counts, histograms, running)
        if self._store is not None:  # after: a stalled Redis never holds the files back
            self._write_hourly(*self._store, counts, histograms)

    def _write_prometheus(
        self,
        counts: Counter[tuple[str, str, str]],
        histograms: dict[tuple[int, str], list[float]],
        running: dict[str, int],
    ) -> None:
        total, wait, run, in_progress, _ = self._metrics
        for (queue, actor, outcome), n in counts.items():
            total.labels(queue, self.tier_of(queue), actor, outcome).inc(n)
        for (kind, queue), tally in histograms.items():
            child = (wait, run)[kind].labels(queue, self.tier_of(queue))
            for i, observed in enumerate(tally[:-1]):
                if observed:
                    child._buckets[i].inc(observed)  # observe() that many times at once (prometheus_client's values)
            child._sum.inc(tally[-1])
        for queue, now_running in running.items():
            in_progress.labels(queue, self.tier_of(queue)).set(now_running)

    def _write_hourly(
        self,
        client: redis.Redis,
        keys: Callable[[str], QueueKeys],
        counts: Counter[tuple[str, str, str]],
        histograms: dict[tuple[int, str], list[float]],
    ) -> None:
        now = current_minute()
        unwritten = self._unwritten.setdefault(now, Counter())
        for (queue, _, outcome), n in counts.items():
            for field in HOURLY.get(outcome, ()):
                unwritten[queue, field] += n
        for (kind, queue), tally in histograms.items():
            name = ("wait", "run")[kind]
            unwritten[queue, name + "s"] += int(sum(tally[:-1]))
            unwritten[queue, name + "_ms"] += round(tally[-1] * 1000)
            if kind == 0:  # the waits by bucket too: the dashboard's percentiles
                for field, observed in zip(WAIT_FIELDS, tally[:-1], strict=True):
                    unwritten[queue, field] += int(observed)
        for minute in [m for m in self._unwritten if m <= now - MINUTES]:
            del self._unwritten[minute]  # out of the hour by now
        try:
            for minute, pending in sorted(self._unwritten.items()):
                record(client, keys, pending, minute)
                del self._unwritten[minute]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if not self._write_failed:
                logger.warning("The last hour's figures cannot be written to Redis (%s); kept until they can.", exc)
            self._write_failed = True
            return
        except redis.RedisError as exc:  # refused (a wrong key type...): retrying would not help
            logger.warning("The last hour's figures were refused by Redis and dropped (%s).", exc)
            self._unwritten.clear()
            return
        if self._write_failed:
            logger.info("The last hour's figures are written to Redis again.")
        self._write_failed = False
