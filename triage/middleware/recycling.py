"""Worker recycling: a process that has run enough messages, or grown too large, is replaced.

Guarantees:
- With `TRIAGE_MAX_MESSAGES_PER_PROCESS` (runs, failed or not) or `TRIAGE_MAX_RSS_MB_PER_PROCESS`
  (resident memory, read from /proc after every run) set, a `dramatiq` worker process that
  passes either limit stops fetching, gives back at once what it fetched and has not started
  (`GracefulShutdown`), lets its running messages finish and settle, waits until every
  settle has reached Redis, deregisters, and then replaces itself with a fresh interpreter
  (`execv` of `python -m triage.admin.recycled`: the same pid, so Dramatiq's master keeps
  supervising it, and none of the old process's memory). The fresh process boots as the
  worker process it replaces: same arguments, same worker id, same log pipe.
- Nothing is lost or run twice: a message runs in the old process (and is acked there) or
  is given back unstarted; the fresh process registers anew before it fetches.
- A SIGTERM or SIGHUP during recycling wins: the process stops as Dramatiq's worker process
  would, without replacing itself.
- Neither limit set (the default): this middleware does nothing per message.
Failure mode: outside Dramatiq's CLI (a `Worker` built in-process, as in tests) there is no
worker process to resume, so a limit only logs once that it cannot recycle; a signal landing in
the microseconds of the `execv` itself is lost, and the master's next one is obeyed.
"""

from __future__ import annotations

import base64
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from dramatiq import Broker, Middleware, Worker

from triage.broker.errors import CONNECTION_ERRORS
from triage.broker.redis_broker import TriageBroker, triage_broker

logger = logging.getLogger(__name__)

RECYCLED_MODULE = "triage.admin.recycled"


@dataclass(frozen=True)
class WorkerProcess:
    """What it takes to start a Dramatiq CLI worker process again: its arguments, id and log pipe."""

    args: Any  # dramatiq.cli's argparse namespace
    worker_id: int
    log_fd: int

    def encoded(self) -> str:
        """This worker process and the import path, as one command-line argument."""
        return base64.urlsafe_b64encode(pickle.dumps((self.args, self.worker_id, self.log_fd, sys.path))).decode()


_resumed: WorkerProcess | None = None  # set by triage.admin.recycled in a process it started


def resumed_as(process: WorkerProcess) -> None:
    """Record that this interpreter is `process`, started again (so it can recycle once more)."""
    global _resumed
    _resumed = process


def current_worker_process() -> WorkerProcess | None:
    """This process as a Dramatiq CLI worker process, or None when it is not one."""
    if _resumed is not None:
        return _resumed
    from dramatiq import cli

    process = multiprocessing.current_process()
    if getattr(process, "_target", None) is not cli.worker_process:
        return None
    args, worker_id, pipe = process._args[:3]  # type: ignore[attr-defined]
    return WorkerProcess(args=args, worker_id=worker_id, log_fd=pipe.fileno())


class ResidentMemory:
    """This process's resident memory in MiB: read from /proc/self/statm, kept open (about a
    microsecond a read); where /proc is missing, the peak from getrusage."""

    def __init__(self) -> None:
        try:
            self._statm: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._statm = None
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def mb(self) -> float:
        if self._statm is not None:
            return int(os.pread(self._statm, 128, 0).split()[1]) * self._page_mb
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    """This process's resident memory in MiB now (one read)."""
    return ResidentMemory().mb()


class Recycling(Middleware):
    """Replaces a worker process past its message or memory limit (see the module's docstring)."""

    def __init__(self, *, max_messages: int | None = None, max_rss_mb: int | None = None) -> None:
        self.max_messages = max_messages
        self.max_rss_mb = max_rss_mb
        self._lock = threading.Lock()
        self._runs = 0
        self._reason: str | None = None
        self._terminating = False
        self._worker: Worker | None = None
        self._process: WorkerProcess | None = None
        self._memory: ResidentMemory

    @property
    def enabled(self) -> bool:
        return self.max_messages is not None or self.max_rss_mb is not None

    def after_process_boot(self, broker: Broker) -> None:
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return
        self._process = current_worker_process()
        self._memory = ResidentMemory()
        if self._process is None:
            logger.warning("Worker recycling needs a `dramatiq` worker process; this process will not recycle.")
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._note_stop(signum)

    def _note_stop(self, signum: signal.Signals) -> None:
        original = signal.getsignal(signum)
        if not callable(original):
            return

        def noted(number: int, frame: FrameType | None) -> Any:
            self._terminating = True
            return original(number, frame)

        signal.signal(signum, noted)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._worker = worker

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if self._process is None or self._reason is not None:
            return
        reason = None
        with self._lock:
            self._runs += 1
            if self.max_messages is not None and self._runs >= self.max_messages:
                reason = f"{self._runs} messages run (limit {self.max_messages})"
            elif self.max_rss_mb is not None:
                reason = self._over_memory(self.max_rss_mb)
            if reason is None or self._reason is not None:
                return
            self._reason = reason
        threading.Thread(target=self._recycle, args=(broker,), name="triage-recycle", daemon=True).start()

    def _over_memory(self, limit: float) -> str | None:
        resident = self._memory.mb()
        return f"{resident:.0f} MiB resident (limit {limit:.0f} MiB)" if resident >= limit else None

    def _recycle(self, broker: Broker) -> None:
        process, worker = self._process, self._worker
        if process is None or worker is None:
            return
        logger.info("Recycling this worker process: %s.", self._reason)
        worker.stop(timeout=process.args.worker_shutdown_timeout)
        triage = triage_broker(broker, needed_by=self)
        warned = False
        while not self._terminating and (triage.backlog.pending or not self._deregistered(triage)):
            if not warned:
                logger.warning("Recycling waits for Redis: settles are still to be written.")
                warned = True
            time.sleep(1.0)
            triage.backlog.flush()
        if self._terminating:
            logger.info("Stopping instead of recycling: a stop was requested.")
            return
        broker.close()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os.set_inheritable(process.log_fd, True)
        os.execv(sys.executable, [sys.executable, "-m", RECYCLED_MODULE, process.encoded()])  # noqa: S606

    @staticmethod
    def _deregistered(triage: TriageBroker) -> bool:
        try:
            triage.registry.deregister()
        except CONNECTION_ERRORS:
            return False
        return True
