"""Worker processes in real `dramatiq` masters: a process past its message or memory limit is
replaced by a fresh interpreter, and every message runs exactly once; the process tuning applies."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
import redis

from actors import runtime
from tests import recycling_actors, worker_actors
from tests.helpers import dramatiq_worker, start_dramatiq, wait_for
from triage.broker.text import as_text

broker = runtime.broker


def _runs(r: redis.Redis) -> list[tuple[str, str, int, float]]:
    """(token, interpreter, pid, resident MiB) of every run, in order."""
    rows = [as_text(raw).split() for raw in r.lrange(recycling_actors.RAN, 0, -1)]
    return [(token, boot, int(pid), float(mib)) for token, boot, pid, mib in rows]


def _assert_each_ran_once(r: redis.Redis, tokens: list[str]) -> list[tuple[str, str, int, float]]:
    runs = _runs(r)
    twice = [token for token, count in Counter(token for token, *_ in runs).items() if count > 1]
    assert twice == [], f"ran twice: {twice}"
    assert sorted(token for token, *_ in runs) == sorted(tokens)
    assert broker.counts("default") == (0, 0, 0)
    assert runtime.queue_stats()["default"]["dead_letters_total"] == 0
    return runs


def test_processes_past_their_message_limit_are_replaced_and_nothing_runs_twice(r: redis.Redis) -> None:
    # Given two worker processes of 4 threads that recycle after 40 messages
    tokens = [f"m{i}" for i in range(400)]
    with dramatiq_worker(
        "actors",
        "tests.recycling_actors",
        queues=["default"],
        processes=2,
        threads=4,
        TRIAGE_MAX_MESSAGES_PER_PROCESS="40",
    ) as worker:
        # When 400 leaking messages are sent
        for token in tokens:
            recycling_actors.leaky.send(token, 64)
        wait_for(lambda: r.llen(recycling_actors.RAN) >= len(tokens), timeout=90)
        wait_for(lambda: broker.counts("default") == (0, 0, 0))
        # Then the master kept supervising: still running, and two workers registered (the old ones deregistered)
        assert worker.process.poll() is None
        wait_for(lambda: len(broker.registry.worker_details()) == 2)
    # And every message ran exactly once, none dead-lettered
    runs = _assert_each_ran_once(r, tokens)
    # And each process recycled in place: the same two pids, many fresh interpreters, none past the limit by much
    by_boot = Counter(boot for _, boot, _, _ in runs)
    assert len({pid for *_, pid, _ in runs}) == 2
    assert len(by_boot) >= 400 // 50, by_boot
    assert max(by_boot.values()) < 2 * 40, by_boot
    assert worker.stop() == 0
    log = "".join(worker.log)
    assert "Recycling this worker process: 40 messages run (limit 40)." in log
    assert "exited unexpectedly" not in log


@pytest.mark.parametrize("limit_mb", [140])
def test_a_leaking_process_is_replaced_before_it_grows_past_its_memory_limit(r: redis.Redis, limit_mb: int) -> None:
    # Given one worker process that recycles at 140 MiB resident
    tokens = [f"leak{i}" for i in range(150)]
    with dramatiq_worker(
        "actors",
        "tests.recycling_actors",
        queues=["default"],
        threads=2,
        TRIAGE_MAX_RSS_MB_PER_PROCESS=str(limit_mb),
    ) as worker:
        # When each message leaks 2 MiB (300 MiB in all)
        for token in tokens:
            recycling_actors.leaky.send(token, 2048)
        wait_for(lambda: r.llen(recycling_actors.RAN) >= len(tokens), timeout=90)
        assert worker.process.poll() is None
    # Then every message ran exactly once
    runs = _assert_each_ran_once(r, tokens)
    # And the process was replaced at least twice, and past the limit ran only the few runs
    # already started (2 MiB each)
    assert len({boot for _, boot, _, _ in runs}) >= 3
    assert max(mib for *_, mib in runs) < limit_mb + 5 * 2, runs
    assert "MiB resident (limit 140 MiB)" in "".join(worker.log)


def test_a_stop_requested_while_recycling_wins_and_the_running_message_finishes(r: redis.Redis) -> None:
    # Given a worker process that recycles after one message, running a message that waits for a release
    with dramatiq_worker(
        "actors",
        "tests.worker_actors",
        "tests.recycling_actors",
        queues=["default"],
        threads=2,
        TRIAGE_MAX_MESSAGES_PER_PROCESS="1",
    ) as worker:
        worker_actors.wait_for_release.send("held")
        wait_for(lambda: r.llen(worker_actors.DONE) == 1)
        recycling_actors.leaky.send("quick", 1)
        wait_for(lambda: "Recycling this worker process" in "".join(worker.log))
        # When the master is told to stop while the recycling waits for the held message
        worker.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "Stopping worker process" in "".join(worker.log))
        r.rpush("test:release", "go")
        # Then the process stops instead of replacing itself, and the held message finished once
        assert worker.process.wait(30) == 0
    log = "".join(worker.log)
    assert "Worker process is ready for action" not in log.split("Recycling this worker process")[1]
    assert [as_text(x) for x in r.lrange(worker_actors.DONE, 0, -1)] == ["started:held"]
    assert broker.counts("default") == (0, 0, 0)


def test_worker_processes_take_the_configured_switch_interval(r: redis.Redis) -> None:
    # Given a worker started with TRIAGE_SWITCH_INTERVAL_MS=0.5
    with dramatiq_worker(
        "actors", "tests.recycling_actors", queues=["default"], threads=1, TRIAGE_SWITCH_INTERVAL_MS="0.5"
    ):
        # When an actor reads its process's switch interval
        recycling_actors.switch_interval.send()
        wait_for(lambda: r.llen(recycling_actors.RAN) == 1)
    # Then it is 0.5 ms (Python's default is 5 ms)
    assert float(as_text(r.lindex(recycling_actors.RAN, 0)).split()[3]) == pytest.approx(0.0005)


def test_recycling_waits_for_a_running_message_however_long_the_shutdown_grace(r: redis.Redis) -> None:
    # Given a worker process that recycles after one message, with a 0.3 s shutdown grace
    args = ["actors", "tests.worker_actors", "tests.recycling_actors", "--processes", "1", "--threads", "2"]
    args += ["--worker-shutdown-timeout", "300", "--queues", "default", "t_slow"]
    worker = start_dramatiq(args, TRIAGE_MAX_MESSAGES_PER_PROCESS="1")
    try:
        worker.wait_ready()
        # When a 2-second message is running as a quick one finishes and starts the recycling
        worker_actors.sleepy.send("long", 2000)
        wait_for(lambda: r.lrange(worker_actors.DONE, 0, -1) == [b"start:long"])
        recycling_actors.leaky.send("quick", 1)
        wait_for(lambda: "Recycling this worker process" in "".join(worker.log))
        # Then the long message finishes in the old process, once, and a fresh one boots after it
        wait_for(lambda: "".join(worker.log).count("Worker process is ready for action") == 2, timeout=20)
        assert r.lrange(worker_actors.DONE, 0, -1) == [b"start:long", b"finish:long"]
        assert broker.counts("t_slow") == (0, 0, 0)
        assert worker.process.poll() is None
    finally:
        assert worker.stop() == 0


def test_after_a_recycle_the_master_still_notices_a_sibling_crash(r: redis.Redis) -> None:
    # Given two worker processes that have both recycled themselves (every 2 messages)
    with dramatiq_worker(
        "actors",
        "tests.recycling_actors",
        queues=["default"],
        processes=2,
        threads=1,
        TRIAGE_MAX_MESSAGES_PER_PROCESS="2",
    ) as worker:
        for i in range(20):
            recycling_actors.leaky.send(f"s{i}", 1)
        wait_for(lambda: r.llen(recycling_actors.RAN) == 20)
        boots_by_pid: dict[int, set[str]] = {}
        for _, boot, pid, _ in _runs(r):
            boots_by_pid.setdefault(pid, set()).add(boot)
        assert len(boots_by_pid) == 2
        assert all(len(boots) >= 2 for boots in boots_by_pid.values())
        # When the second worker process is killed
        os.kill(max(boots_by_pid), signal.SIGKILL)
        # Then the master notices, as it would without recycling: it stops the group and exits
        code = worker.process.wait(20)
    assert code != 0
    assert "exited unexpectedly" in "".join(worker.log)
