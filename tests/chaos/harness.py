"""Chaos harness: a supervised `dramatiq` worker, a ledger of starts and finishes, a results table."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import BIN, ROOT, env_with
from triage.admin.processes import children

RESULTS: list[dict[str, str]] = []


def record_result(fault: str, lost: int, duplicated: int, recovery: str, note: str = "") -> None:
    RESULTS.append(
        {"fault": fault, "lost": str(lost), "duplicated": str(duplicated), "recovery": recovery, "note": note}
    )


@dataclass
class Ledger:
    path: Path

    def events(self) -> list[tuple[float, str, str, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            at, event, token, pid = line.split()
            out.append((float(at), event, token, int(pid)))
        return out

    def finished(self) -> Counter[str]:
        return Counter(token for _, event, token, _ in self.events() if event == "finish")

    def started(self) -> Counter[str]:
        return Counter(token for _, event, token, _ in self.events() if event == "start")

    def running_at(self, moment: float) -> set[str]:
        """Tokens started and not finished at `moment`."""
        started = {t for at, e, t, _ in self.events() if e == "start" and at <= moment}
        finished = {t for at, e, t, _ in self.events() if e == "finish" and at <= moment}
        return started - finished

    def last_finish(self, tokens: set[str]) -> float:
        return max(at for at, event, token, _ in self.events() if event == "finish" and token in tokens)


@dataclass
class Supervisor:
    """Runs `dramatiq tests.chaos.chaos_actors` and starts it again whenever it exits, as a
    platform restarts a crashed dyno."""

    redis_url: str
    ledger: Path
    threads: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    current: subprocess.Popen[bytes] | None = None
    _stopping: bool = False
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        env = env_with(
            REDIS_URL=self.redis_url,
            CHAOS_LEDGER=str(self.ledger),
            TRIAGE_HEARTBEAT_TIMEOUT="2",
            **self.extra_env,
        )
        log = open(self.ledger.with_suffix(".worker.log"), "ab")  # noqa: SIM115
        while not self._stopping:
            self.current = subprocess.Popen(
                [str(BIN / "dramatiq"), "actors", "tests.chaos.chaos_actors", "--processes", "1",
                 "--threads", str(self.threads), "--queues", "chaos", "--worker-shutdown-timeout", "20000"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            self.current.wait()
            if not self._stopping:
                self.restarts += 1
                time.sleep(0.2)
        log.close()

    def children(self) -> list[int]:
        assert self.current is not None
        return children(self.current.pid)

    def stop(self) -> None:
        self._stopping = True
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signal.SIGTERM)
            try:
                self.current.wait(30)
            except subprocess.TimeoutExpired:
                self.current.kill()
        if self._thread is not None:
            self._thread.join(35)


def kill_orphans(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
