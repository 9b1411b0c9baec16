"""`triage run` (behind `make run`): embedded Redis, three tier workers, the demo; Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import redis

from admin.redis_server import answers, free_port
from tests.helpers import BIN, ROOT, env_with, wait_for


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_run_brings_up_the_stack_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    # Given no REDIS_URL and nothing listening on the embedded Redis port
    port = free_port()
    env = env_with(TRIAGE_EMBEDDED_REDIS_PORT=str(port))
    env.pop("REDIS_URL")
    url = f"redis://127.0.0.1:{port}/0"
    assert not answers(url)
    # When `triage run` starts, in its own session as a terminal would run it
    runner = subprocess.Popen(
        [str(BIN / "triage"), "run", "--data-dir", str(tmp_path / ".triage")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(runner.stdout or []), daemon=True)
    reader.start()
    client = redis.Redis.from_url(url)
    try:
        # Then an embedded Redis comes up, three worker processes heartbeat and the demo sends work
        wait_for(lambda: answers(url), timeout=30)
        wait_for(lambda: client.zcard("triage:__heartbeats__") >= 3, timeout=60)
        wait_for(lambda: any("demo: sent" in line for line in output), timeout=30)
        time.sleep(2)
        # And the queues move: far fewer messages are stored than were sent
        sent = int(next(line for line in output if "demo: sent" in line).split("sent ")[1].split()[0])
        stored = sum(client.hlen(f"triage:{q}.msgs") for q in ("critical", "default", "email"))
        assert sent >= 20
        assert stored < sent / 2, f"{stored} of {sent} messages still stored"
        tree = descendants(runner.pid)
        assert len(tree) >= 5  # redis, 3 workers (and their forks), demo
    finally:
        # When the user presses Ctrl-C
        os.killpg(runner.pid, signal.SIGINT)
        code = runner.wait(60)
        reader.join(10)
        if runner.stdout is not None:
            runner.stdout.close()
        client.close()
    # Then everything stops, Redis included, and nothing is left running
    assert code == 0, "".join(output[-40:])
    wait_for(lambda: not any(alive(pid) for pid in tree), timeout=10)
    assert not answers(url)
    data = tmp_path / ".triage"
    assert (data / "appendonlydir").is_dir() or (data / "appendonly.aof").is_file()  # Redis 7 or 6
    assert "Received SIGINT" not in (data / "redis.log").read_text()  # stopped by the runner, last
