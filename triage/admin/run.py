"""The local runner behind `make run`: Redis, the Procfile's processes and a demo producer.

Guarantees:
- With `REDIS_URL` unset, uses the Redis on localhost:6379 if one answers, else starts
  an embedded one there (port from `TRIAGE_EMBEDDED_REDIS_PORT`) with its data and AOF
  under `.triage/`.
- With the demo on, adds the demo producer and sets `TRIAGE_DEMO=1`, so that the workers
  declare the demo's actors.
- Starts every Procfile line through bash, as Heroku and Render do, each in a process
  group of its own, with the virtualenv's scripts first on PATH; prefixes output lines
  with the process name.
- Ctrl-C or SIGTERM, or any process exiting on its own, stops everything: one SIGTERM
  to each process (a Dramatiq master passes it on to its workers, which finish their
  running tasks), SIGKILL to whatever is left in each group after the grace period,
  then Redis. Children
  also get SIGTERM from the kernel if this runner itself dies (PR_SET_PDEATHSIG), so
  nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

from .processes import die_with_parent
from .redis_server import RedisServer, answers

GRACE_SECONDS = 30.0
_LINE = re.compile(r"^([A-Za-z0-9_.-]+):\s*(.+)$")


def parse_procfile(path: Path) -> list[tuple[str, str]]:
    entries = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"{path}: not a Procfile line (NAME: command): {raw!r}")
        entries.append((match.group(1), match.group(2)))
    return entries


def _pump(name: str, stream: IO[bytes], width: int) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{name:<{width}} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


class Stack:
    def __init__(self, entries: list[tuple[str, str]], env: dict[str, str]) -> None:
        self.entries = entries
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        width = max(len(name) for name, _ in self.entries)
        for name, command in self.entries:
            process = subprocess.Popen(
                ["bash", "-c", command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            self.processes[name] = process
            assert process.stdout is not None
            threading.Thread(target=_pump, args=(name, process.stdout, width), daemon=True).start()
            print(f"run: started {name} (pid {process.pid}): {command}", flush=True)

    def first_exited(self) -> tuple[str, int] | None:
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        # SIGTERM to each group leader only (Procfile lines `exec` their program): a Dramatiq
        # master forwards it to its workers, and a worker that gets a second SIGTERM
        # abandons its running tasks at once.
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        for process in self.processes.values():
            _signal_group(process, signal.SIGKILL)  # whatever is left in the group, children included
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def run_stack(*, procfile: str, data_dir: str, demo: bool) -> int:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    entries = parse_procfile(Path(procfile))
    if demo:
        entries.append(("demo", f"{shlex.quote(sys.executable)} -m triage.admin demo"))
        env["TRIAGE_DEMO"] = "1"  # the workers declare the demo's actors
    embedded: RedisServer | None = None
    if not env.get("REDIS_URL"):
        port = int(env.get("TRIAGE_EMBEDDED_REDIS_PORT", "6379"))
        url = f"redis://127.0.0.1:{port}/0"
        if answers(url):
            print(f"run: using the Redis that answers at {url}", flush=True)
        else:
            embedded = RedisServer(port=port, data_dir=Path(data_dir).resolve()).start()
            print(f"run: started embedded Redis at {url} (data and AOF in {embedded.data_dir})", flush=True)
        env["REDIS_URL"] = url

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(entries, env)
    code = 0
    try:
        stack.start()
        while not stopping.wait(0.2):
            exited = stack.first_exited()
            if exited:
                print(f"run: {exited[0]} exited with status {exited[1]}; stopping everything", flush=True)
                code = 1
                break
    finally:
        print("run: stopping", flush=True)
        stack.stop()
        if embedded is not None:
            embedded.stop()
        print("run: stopped", flush=True)
    return code
