"""`triage run` (behind `make run`): embedded Redis, three tier workers, the demo; Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import redis

from tests.helpers import BIN, ROOT, env_with, wait_for
from triage.admin.processes import alive, descendants
from triage.admin.redis_server import answers, free_port


class Stack:
    """`triage run` started as a terminal would start it, with an embedded Redis on a free port."""

    def __init__(self, data_dir: Path) -> None:
        port = free_port()
        env = env_with(TRIAGE_EMBEDDED_REDIS_PORT=str(port), PORT=str(free_port()))  # the web process's port
        env.pop("REDIS_URL")
        self.url = f"redis://127.0.0.1:{port}/0"
        assert not answers(self.url)
        self.runner = subprocess.Popen(
            [str(BIN / "triage"), "run", "--data-dir", str(data_dir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.reader = threading.Thread(target=lambda: self.output.extend(self.runner.stdout or []), daemon=True)
        self.reader.start()
        self.client = redis.Redis.from_url(self.url)

    def wait_until_up(self) -> set[int]:
        """Wait for Redis, three heartbeating workers and the demo; return the runner's process tree."""
        wait_for(lambda: answers(self.url), timeout=30)
        wait_for(lambda: sum("ready for action" in line for line in self.output) >= 3, timeout=60)
        wait_for(lambda: any("demo: sent" in line for line in self.output), timeout=30)
        tree = descendants(self.runner.pid)
        assert len(tree) >= 5  # redis, 3 workers (and their forks), demo
        return tree

    def close(self) -> int:
        if self.runner.poll() is None:
            os.killpg(self.runner.pid, signal.SIGINT)
        code = self.runner.wait(60)
        self.reader.join(10)
        if self.runner.stdout is not None:
            self.runner.stdout.close()
        self.client.close()
        return code


def test_run_brings_up_the_stack_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    # Given no REDIS_URL and nothing listening on the embedded Redis port
    # When `triage run` starts
    stack = Stack(tmp_path / ".triage")
    try:
        # Then an embedded Redis comes up, three worker processes heartbeat and the demo sends work
        tree = stack.wait_until_up()
        time.sleep(2)
        # And the workers run the demo's actors: critical and default work is acknowledged, none dead-lettered
        sent = int(next(line for line in stack.output if "demo: sent" in line).split("sent ")[1].split()[0])
        assert sent >= 20
        stats = {q: stack.client.hgetall(f"{{triage:{q}}}:stats") for q in ("critical", "default", "background")}
        acked = sum(int(s.get(b"acked_total", 0)) for q, s in stats.items() if q != "background")
        assert acked >= sent / 4, f"{acked} of {sent} acknowledged"
        assert not any(stack.client.zcard(f"{{triage:{q}}}:dead") for q in stats), "demo messages dead-lettered"
    finally:
        # When the user presses Ctrl-C
        code = stack.close()
    # Then everything stops, Redis included, and nothing is left running
    assert code == 0, "".join(stack.output[-40:])
    # And each worker stopped gracefully: one SIGTERM, not the double one that hard-kills a Dramatiq worker
    assert sum("Stopping worker process" in line for line in stack.output) == 3
    assert not any("Killing worker process" in line for line in stack.output)
    wait_for(lambda: not any(alive(pid) for pid in tree), timeout=10)
    assert not answers(stack.url)
    data = tmp_path / ".triage"
    assert (data / "appendonlydir").is_dir() or (data / "appendonly.aof").is_file()  # Redis 7 or 6
    assert "Received SIGINT" not in (data / "redis.log").read_text()  # stopped by the runner, last


def test_killing_the_runner_leaves_no_orphans(tmp_path: Path) -> None:
    # Given a running stack
    stack = Stack(tmp_path / ".triage")
    tree: set[int] = set()
    try:
        tree = stack.wait_until_up()
        # When the runner itself is killed with SIGKILL (no chance to clean up)
        stack.runner.kill()
        # Then its children stop by themselves: workers, demo and Redis
        wait_for(lambda: not any(alive(pid) for pid in tree), timeout=40)
        assert not answers(stack.url)
    finally:
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        stack.close()
