"""Boot before Redis: a worker, the scheduler and the web process started while their Redis is
unreachable wait, log one line per attempt naming where Redis is (no password, no traceback), and
work as soon as it answers: the worker registers, heartbeats, runs messages, and is reaped if it
dies. Each test starts its own redis-server, with a password, after the process. (Part of the
chaos suite, `make chaos`; the worker's case runs in `make test` too.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from tests import periodic_actors
from tests.helpers import BIN, ROOT, Worker, dramatiq_worker, env_with, start_dramatiq, wait_for
from tests.web_helpers import start as start_web
from tests.worker_actors import DONE
from triage.admin.processes import descendants
from triage.admin.redis_server import RedisServer, free_port
from triage.broker.redis_broker import TriageBroker

PASSWORD = "s3cret-boot-password"
WORKER = ["actors", "tests.worker_actors", "--processes", "1"]


@pytest.fixture
def later_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that requires a password, not started: the test starts it after its process."""
    server = RedisServer(port=free_port(), data_dir=tmp_path, appendonly=False, password=PASSWORD)
    yield server
    server.stop()


def message(queue: str, actor: str, *args: Any) -> Message[Any]:
    return Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})


def assert_one_line_per_attempt(log: list[str], port: int) -> int:
    """The process's output has no traceback and no password, one line per failed attempt that
    names Redis's host and port, one line when it answered, and no other line naming Redis's
    address (no per-attempt noise from anything else). The number of attempts logged."""
    text = "".join(log)
    assert "Traceback" not in text
    assert PASSWORD not in text
    waits = [line for line in log if "does not answer" in line]
    numbers = [int(match.group(1)) for line in waits if (match := re.search(r"attempt (\d+),", line))]
    assert len(numbers) >= 2, text[-3000:]
    assert numbers == list(range(1, len(waits) + 1))
    assert all(f"Redis at 127.0.0.1:{port} does not answer" in line for line in waits)
    answered = [line for line in log if f"Redis at 127.0.0.1:{port} answers." in line]
    assert len(answered) == 1
    others = [line for line in log if f"127.0.0.1:{port}" in line and line not in waits + answered]
    assert others == []
    return len(waits)


@pytest.mark.fast
def test_a_worker_started_before_redis_registers_heartbeats_and_runs_work_once_it_answers(
    later_redis: RedisServer,
) -> None:
    # Given a worker started while nothing listens at its Redis URL (which carries a password)
    # (heartbeats every 0.5 s: a timeout of 2 s)
    args = [*WORKER, "--threads", "2", "--queues", "default"]
    worker = start_dramatiq(args, REDIS_URL=later_redis.url, TRIAGE_HEARTBEAT_TIMEOUT="2")
    try:
        time.sleep(2.5)  # a few attempts: 0.5 and 1 s apart
        assert worker.process.poll() is None
        # When Redis starts
        later_redis.start()
        answered = time.monotonic()
        broker = TriageBroker(url=later_redis.url, middleware=[])
        # Then the worker registers within one back-off step (5 s), with its queues, and heartbeats
        wait_for(lambda: len(broker.registry.worker_details()) == 1, timeout=10)
        assert time.monotonic() - answered < 7
        [registered] = broker.registry.worker_details()
        assert registered["queues"] == ["default"]
        beat = registered["last_beat_ms"]
        wait_for(lambda: broker.registry.worker_details()[0]["last_beat_ms"] > beat, timeout=10)
        # And it runs a message sent now
        broker.enqueue(message("default", "record_default", "after-boot"))
        client = redis.Redis.from_url(later_redis.url)
        wait_for(lambda: client.lrange(DONE, 0, -1) == [b"default:after-boot"])
        worker.wait_ready(5)
    finally:
        code = worker.stop()
    # And it stopped cleanly, deregistered, having logged one line per attempt and nothing else about Redis
    assert code == 0
    assert broker.registry.worker_details() == []
    assert_one_line_per_attempt(worker.log, later_redis.port)


def test_a_worker_booted_before_redis_then_killed_has_its_messages_reclaimed(later_redis: RedisServer) -> None:
    # Given a one-thread worker booted before Redis, registered once Redis answered (heartbeat timeout 1 s)
    args = [*WORKER, "--threads", "1", "--queues", "t_slow"]
    first = start_dramatiq(args, REDIS_URL=later_redis.url, TRIAGE_HEARTBEAT_TIMEOUT="1")
    try:
        time.sleep(1.5)
        later_redis.start()
        broker = TriageBroker(url=later_redis.url, middleware=[])
        client = redis.Redis.from_url(later_redis.url)
        wait_for(lambda: len(broker.registry.worker_details()) == 1, timeout=10)
        # holding messages: one running, one fetched and waiting
        for token in ("a", "b", "c"):
            broker.enqueue(message("t_slow", "sleepy", token, 2000))
        wait_for(lambda: client.lrange(DONE, 0, -1) == [b"start:a"])
        wait_for(lambda: broker.counts("t_slow") == (1, 0, 2))
        # When its worker process is killed with SIGKILL
        [registered] = broker.registry.worker_details()
        os.kill(registered["pid"], signal.SIGKILL)
        first.process.wait(20)
    finally:
        first.stop()
    # Then another worker's reaper gives its messages back, and every message runs to the end
    with dramatiq_worker(
        *WORKER[:2], queues=["t_slow"], threads=1, REDIS_URL=later_redis.url, TRIAGE_HEARTBEAT_TIMEOUT="1"
    ):
        wait_for(lambda: {b"finish:a", b"finish:b", b"finish:c"} <= set(client.lrange(DONE, 0, -1)), timeout=30)
        wait_for(lambda: broker.counts("t_slow") == (0, 0, 0))
    assert client.lrange(DONE, 0, -1).count(b"finish:c") == 1


def test_a_worker_waiting_for_redis_stops_at_once_on_sigterm(later_redis: RedisServer) -> None:
    # Given a worker waiting for a Redis that does not answer
    worker = start_dramatiq([*WORKER, "--threads", "1", "--queues", "default"], REDIS_URL=later_redis.url)
    try:
        wait_for(lambda: len(list(descendants(worker.process.pid))) >= 1, timeout=10)
        time.sleep(3)
        # When SIGTERM reaches every process, as platforms send it
        stopped = time.monotonic()
        for pid in [*descendants(worker.process.pid), worker.process.pid]:
            os.kill(pid, signal.SIGTERM)
        # Then it exits at once, cleanly, without registering
        assert worker.process.wait(10) == 0
        assert time.monotonic() - stopped < 5
    finally:
        worker.stop()
    assert "Stopped while waiting for Redis" in "".join(worker.log)
    assert "Traceback" not in "".join(worker.log)


def test_the_scheduler_started_before_redis_sends_ticks_once_it_answers(later_redis: RedisServer) -> None:
    # Given `triage scheduler` started while nothing listens at its Redis URL
    command = [str(BIN / "triage"), "scheduler", "--app", "tests.periodic_actors"]
    env = env_with(REDIS_URL=later_redis.url)
    scheduler = Worker(
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    try:
        wait_for(lambda: sum("does not answer" in line for line in scheduler.log) >= 3, timeout=20)
        # When Redis starts
        later_redis.start()
        broker = TriageBroker(url=later_redis.url, middleware=[])
        # Then ticks are sent (the latest missed one at once, else the next minute's)
        wait_for(lambda: sum(broker.counts(periodic_actors.QUEUE)) >= 1, timeout=75, interval=0.5)
    finally:
        scheduler.stop()
    assert_one_line_per_attempt(scheduler.log, later_redis.port)


def test_the_web_process_started_before_redis_serves_and_turns_ready_once_it_answers(
    later_redis: RedisServer,
) -> None:
    # Given `triage serve` started while nothing listens at its Redis URL
    server = start_web(REDIS_URL=later_redis.url)  # returns once /healthz answers 200
    output = Worker(server.process)  # its lines, as they come
    try:
        # Then it serves: healthy, not ready
        assert server.get("/healthz")[0] == 200
        assert server.get("/readyz")[0] == 503
        wait_for(lambda: sum("does not answer" in line for line in output.log) >= 3, timeout=20)
        # When Redis starts, it turns ready, and its own wait logs that Redis answers
        later_redis.start()
        wait_for(lambda: server.get("/readyz")[0] == 200, timeout=10)
        wait_for(lambda: any(" answers." in line for line in output.log), timeout=10)
    finally:
        output.stop()
    assert_one_line_per_attempt(output.log, later_redis.port)


def test_a_worker_stopped_while_redis_is_down_stays_registered_for_the_reaper(tmp_path: Path) -> None:
    # Given a registered worker (heartbeat timeout 2 s) on a Redis that keeps its data (AOF always)
    server = RedisServer(port=free_port(), data_dir=tmp_path / "aof", appendonly=True, fsync="always").start()
    try:
        args = [*WORKER, "--threads", "2", "--queues", "default"]
        worker = start_dramatiq(args, REDIS_URL=server.url, TRIAGE_HEARTBEAT_TIMEOUT="2")
        worker.wait_ready()
        broker = TriageBroker(url=server.url, middleware=[])
        wait_for(lambda: len(broker.registry.worker_details()) == 1, timeout=10)
        [registered] = broker.registry.worker_details()
        # When Redis goes down, the worker is stopped meanwhile, and Redis comes back with its data
        server.stop()
        assert worker.stop() == 0
        server.start()
        # Then the worker did not deregister (it could not give back what it might hold), so the
        # reaper of another worker takes its place once the heartbeat is too old
        assert broker.client.hexists(broker.registry.workers, registered["id"])
        log = "".join(worker.log)
        assert "not deregistering" in log or "Could not deregister" in log, log[-2000:]
        broker.close()
    finally:
        server.stop()
