"""Real processes for tests: a `dramatiq` worker and the `triage` CLI, started as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def triage(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "triage"), *args],
        cwd=cwd,
        env=env or env_with(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Worker:
    """A `dramatiq` CLI process; `log` collects its output lines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.log: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if "Worker process is ready for action" in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 30) -> None:
        if not self._ready.wait(timeout):
            raise AssertionError("worker did not boot:\n" + "".join(self.log[-40:]))

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@contextmanager
def dramatiq_worker(
    *modules: str, queues: list[str], threads: int = 2, processes: int = 1, new_session: bool = False, **env: str
) -> Iterator[Worker]:
    args = [str(BIN / "dramatiq"), *modules, "--processes", str(processes), "--threads", str(threads)]
    args += ["--queues", *queues]
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env_with(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )
    worker = Worker(process)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def start_dramatiq(args: list[str], **env: str) -> Worker:
    """`dramatiq` with these exact arguments (modules, options), started; stop it with `.stop()`."""
    process = subprocess.Popen(
        [str(BIN / "dramatiq"), *args],
        cwd=ROOT,
        env=env_with(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Worker(process)


def wait_for(condition: Callable[[], object], timeout: float = 20, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def append_to_ledger(path: str, event: str, token: str) -> None:
    """One ledger line (time, event, token, pid), in one O_APPEND write of a short line: a ledger
    kept outside Redis, so that a Redis fault cannot hide a loss (`tests.chaos.harness.Ledger`)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {event} {token} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
