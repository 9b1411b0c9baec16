"""A real `dramatiq actors --queues critical` process consumes its tier and nothing else."""

from __future__ import annotations

import subprocess

import redis

from actors import runtime
from tests import worker_actors
from tests.helpers import BIN, ROOT, dramatiq_worker, env_with, wait_for

broker = runtime.broker


def test_critical_worker_leaves_other_tiers_untouched(r: redis.Redis) -> None:
    # Given work queued on all three tiers
    for i in range(5):
        worker_actors.record_critical.send(f"c{i}")
        worker_actors.record_default.send(f"d{i}")
        worker_actors.record_background.send(f"b{i}")
    # When a worker for the critical tier runs
    with dramatiq_worker("actors", "tests.worker_actors", queues=["critical"]):
        wait_for(lambda: r.llen(worker_actors.DONE) == 5)
        wait_for(lambda: broker.counts("critical") == (0, 0, 0))
    # Then it ran every critical message, and only those
    done = [x.decode() if isinstance(x, bytes) else x for x in r.lrange(worker_actors.DONE, 0, -1)]
    assert sorted(done) == [f"critical:c{i}" for i in range(5)]
    assert broker.counts("default") == (5, 0, 0)
    assert broker.counts("background") == (5, 0, 0)


def test_worker_with_bad_configuration_stops_at_start_naming_the_variable() -> None:
    # Given an invalid setting in the worker's environment
    # When `dramatiq actors` starts
    done = subprocess.run(
        [str(BIN / "dramatiq"), "actors", "--processes", "1", "--threads", "1"],
        cwd=ROOT,
        env=env_with(TRIAGE_ENCODER="pickle"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits at start and says which variable is wrong and what it accepts
    assert done.returncode != 0
    assert "TRIAGE_ENCODER: must be one of 'msgpack' or 'json'" in done.stdout + done.stderr
