"""Worker recycling: a process that has run enough messages, or grown too large, is replaced.

Guarantees:
- With `TRIAGE_MAX_MESSAGES_PER_PROCESS` (runs, failed or not) or `TRIAGE_MAX_RSS_MB_PER_PROCESS`
  (resident memory, read from /proc after every run) set, a `dramatiq` worker process that
  passes either limit: stops fetching and gives back at once what it fetched and has not
  started; lets each worker thread finish the message it holds, however long it takes (its
  time limit still applies), and take no other; stops its worker (which settles and
  deregisters); waits until every settle has reached Redis; and replaces itself with a fresh
  interpreter (`execv` of `python -m triage.middleware.recycled`, with the same interpreter
  flags: the same pid, so Dramatiq's master keeps supervising it, and none of the old
  process's memory). The fresh process boots as the worker process it replaces: same
  arguments, worker id and log pipe, and Dramatiq's signals blocked until its handlers are in
  place, as at a first boot.
- Nothing is lost or run twice by recycling: a message runs in the old process and is acked
  there, or is given back unstarted; the fresh process registers anew before it fetches.
- A stop requested (SIGTERM, SIGHUP) before the replacement wins: while running messages
  finish, Dramatiq's own shutdown takes over at once (the shutdown grace applies); after
  that, the process stops instead of replacing itself. No recycling starts once a stop was
  requested.
- If `execv` fails, the process exits with status 1 (Dramatiq's master then stops the group
  and says so), rather than staying alive without a worker.
- Dramatiq's master keeps watching every worker process after a recycle: the pipes a worker
  process was forked with stay open across `execv`.
- Neither limit set (the default): one early return per message.
Failure mode: outside Dramatiq's CLI (a `Worker` built in-process, as in tests) there is no
worker process to resume: a limit only logs once that it cannot recycle. A signal that lands
between the last check and the `execv` itself (a few bytecodes) is lost; the master's next
one is obeyed. Processes started together reach a message limit at about the same time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from dramatiq import Broker, Middleware, Worker, cli

from triage.broker.redis_broker import triage_broker

from .shutdown import give_back_unstarted

logger = logging.getLogger(__name__)

RECYCLED_MODULE = "triage.middleware.recycled"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class WorkerProcess:
    """What it takes to start a Dramatiq CLI worker process again: its arguments, id and log pipe."""

    args: argparse.Namespace  # dramatiq.cli's arguments
    worker_id: int
    log_fd: int
    # The pipes it was forked with, kept open across execv: the log pipe, and the one whose end
    # tells Dramatiq's master that this process has exited (closed early, the master would wait
    # on this process alone and miss a sibling's crash).
    pipes: tuple[int, ...] = ()

    def encoded(self) -> str:
        """This worker process and the import path, as one command-line argument (JSON)."""
        state = {"args": vars(self.args), "worker_id": self.worker_id, "log_fd": self.log_fd, "path": sys.path}
        return base64.urlsafe_b64encode(json.dumps({**state, "pipes": self.pipes}).encode()).decode()

    @staticmethod
    def decoded(encoded: str) -> tuple[WorkerProcess, list[str]]:
        """The worker process and the import path that `encoded()` wrote."""
        state = json.loads(base64.urlsafe_b64decode(encoded))
        args, pipes = argparse.Namespace(**state["args"]), tuple(int(fd) for fd in state["pipes"])
        process = WorkerProcess(args, int(state["worker_id"]), int(state["log_fd"]), pipes)
        return process, [str(entry) for entry in state["path"]]


def open_pipes() -> tuple[int, ...]:
    """The pipes this process has open (none where /proc is missing)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return ()
    pipes = []
    for name in fds:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("pipe:"):
                pipes.append(int(name))
        except OSError:  # the listing's own descriptor, gone
            continue
    return tuple(sorted(pipes))


_resumed: WorkerProcess | None = None  # set by triage.middleware.recycled in a process it started


def resumed_as(process: WorkerProcess) -> None:
    """Record that this interpreter is `process`, started again (so it can recycle once more)."""
    global _resumed
    _resumed = process


def current_worker_process() -> WorkerProcess | None:
    """This process as a Dramatiq CLI worker process, or None when it is not one."""
    if _resumed is not None:
        return _resumed
    process = multiprocessing.current_process()
    if getattr(process, "_target", None) is not cli.worker_process:
        return None
    args, worker_id, pipe = process._args[:3]  # type: ignore[attr-defined]
    return WorkerProcess(args=args, worker_id=worker_id, log_fd=pipe.fileno(), pipes=open_pipes())


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

    def close(self) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None


def rss_mb() -> float:
    """This process's resident memory in MiB now (one read of /proc, or the peak without it)."""
    memory = ResidentMemory()
    try:
        return memory.mb()
    finally:
        memory.close()


class Recycling(Middleware):
    """Replaces a worker process past its message or memory limit (see the module's docstring).

    `max_messages`: runs after which the process is replaced (None: no limit); `max_rss_mb`:
    the resident memory, in MiB, at which it is (None: no limit).
    """

    def __init__(self, *, max_messages: int | None = None, max_rss_mb: int | None = None) -> None:
        self.max_messages = max_messages
        self.max_rss_mb = max_rss_mb
        self._lock = threading.Lock()
        self._runs = 0
        self._reason: str | None = None
        self._stop_requested = False
        self._held_signal: tuple[Any, int, FrameType | None] | None = None  # while the worker stops
        self._worker: Worker | None = None
        self._process: WorkerProcess | None = None
        self._memory: ResidentMemory

    def after_process_boot(self, broker: Broker) -> None:
        if self.max_messages is None and self.max_rss_mb is None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        self._process = current_worker_process()
        if self._process is None:
            logger.warning("Worker recycling needs a `dramatiq` worker process; this process will not recycle.")
            return
        self._memory = ResidentMemory()
        for signum in STOP_SIGNALS:
            self._note_stops(signum)

    def _note_stops(self, signum: signal.Signals) -> None:
        """A stop request is noted; it goes on to Dramatiq's handler at once, except while the
        recycling stops the worker itself (then once that is done: see `_recycle`)."""
        original = signal.getsignal(signum)
        if not callable(original):
            return

        def noted(number: int, frame: FrameType | None) -> Any:
            with self._lock:
                self._stop_requested = True
                if self._held_signal is not None:
                    self._held_signal = (original, number, frame)
                    return None
            return original(number, frame)

        signal.signal(signum, noted)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._worker = worker

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if self._process is None:
            return
        with self._lock:
            self._runs += 1
            if self._reason is not None or self._stop_requested:
                return
            self._reason = self._over_limit()
            if self._reason is None:
                return
        threading.Thread(target=self._recycle, args=(broker,), name="triage-recycle", daemon=True).start()

    def _over_limit(self) -> str | None:
        if self.max_messages is not None and self._runs >= self.max_messages:
            return f"{self._runs} messages run (limit {self.max_messages})"
        if self.max_rss_mb is not None:
            resident = self._memory.mb()
            if resident >= self.max_rss_mb:
                return f"{resident:.0f} MiB resident (limit {self.max_rss_mb} MiB)"
        return None

    def _recycle(self, broker: Broker) -> None:
        process, worker = self._process, self._worker
        if process is None or worker is None:
            return
        triage = triage_broker(broker, needed_by=self)
        logger.info("Recycling this worker process: %s.", self._reason)
        give_back_unstarted(triage, worker)
        for thread in worker.workers:  # each finishes the message it holds, if any, and takes no other
            thread.stop()
        while any(thread.is_alive() for thread in worker.workers) and not self._stop_requested:
            for thread in worker.workers:
                thread.join(0.1)
        with self._lock:
            if self._stop_requested:
                return  # Dramatiq's handler has it: its shutdown, with its grace
            self._held_signal = (None, 0, None)  # from here, a stop request waits for the worker to stop
        worker.stop(timeout=process.args.worker_shutdown_timeout)
        while triage.backlog.pending and not self._stop_requested:
            logger.warning("Recycling waits for Redis: %d settle(s) still to be written.", len(triage.backlog.pending))
            time.sleep(1.0)
            triage.backlog.flush()
        broker.close()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # Dramatiq's signals, blocked in this thread: the fresh process starts with them blocked,
        # as a first boot does (the master blocks them before it forks); its handlers unblock them.
        cli.try_block_signals()  # type: ignore[no-untyped-call]
        with self._lock:
            original, number, frame = self._held_signal
            self._held_signal = None
        if self._stop_requested:
            logger.info("Stopping instead of recycling: a stop was requested.")
            cli.try_unblock_signals()
            if original is not None:
                original(number, frame)  # Dramatiq's handler: its main loop ends the process
            return
        self._replace(process)

    @staticmethod
    def _replace(process: WorkerProcess) -> None:
        """execv the fresh interpreter, holding the log handlers' locks (no record is cut in two);
        if anything fails, exit with status 1 (Dramatiq's master then stops the group)."""
        handlers = logging.getLogger().handlers
        try:
            argv = [sys.executable, *subprocess._args_from_interpreter_flags()]  # type: ignore[attr-defined]
            argv += ["-m", RECYCLED_MODULE, process.encoded()]
            for fd in {process.log_fd, *process.pipes}:
                with contextlib.suppress(OSError):  # closed since
                    os.set_inheritable(fd, True)
            for handler in handlers:
                handler.acquire()
            os.execv(sys.executable, argv)  # noqa: S606
        except BaseException as exc:
            for handler in handlers:
                with contextlib.suppress(RuntimeError):  # not acquired
                    handler.release()
            logger.critical("Recycling failed: cannot start a fresh process (%s); exiting.", exc)
            os._exit(1)
