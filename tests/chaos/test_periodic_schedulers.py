"""Three real schedulers (two `triage scheduler`, one `periodiq actors`) for a few minutes of a
per-minute job, one of them killed (SIGKILL) and restarted mid-way, a real worker running the
ticks: every minute runs once, none twice, none lost while any scheduler was up. And two
schedulers without a worker (periodiq's command and `triage scheduler`): each tick is stored once."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import pytest
import redis

from actors import runtime
from tests.helpers import BIN, ROOT, dramatiq_worker, env_with, wait_for
from tests.periodic_actors import QUEUE, RAN

from .harness import record_result

MINUTES = 4


def start_scheduler(periodiq: bool = False) -> subprocess.Popen[bytes]:
    """`triage scheduler`, or periodiq's own command."""
    args = (
        ["periodiq", "actors", "tests.periodic_actors"]
        if periodiq
        else ["triage", "scheduler", "--app", "tests.periodic_actors"]
    )
    return subprocess.Popen(
        [str(BIN / args[0]), *args[1:]],
        cwd=ROOT,
        env=env_with(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.timeout(600)
def test_three_schedulers_one_killed_run_each_minute_once(r: redis.Redis) -> None:
    # Given a worker and three schedulers of a per-minute job, started early in a minute
    while dt.datetime.now(dt.UTC).second > 45:
        time.sleep(1)
    started = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    schedulers = [start_scheduler(), start_scheduler(), start_scheduler(periodiq=True)]
    try:
        with dramatiq_worker("actors", "tests.periodic_actors", queues=[QUEUE]):
            # When they run for a few minutes, and one is killed and restarted in the middle
            time.sleep(90)
            schedulers[0].send_signal(signal.SIGKILL)
            schedulers[0].wait(10)
            schedulers[0] = start_scheduler()
            end = started + dt.timedelta(minutes=MINUTES)
            time.sleep(max(0.0, (end - dt.datetime.now(dt.UTC)).total_seconds()) + 5)
            wait_for(lambda: runtime.queue_stats()[QUEUE]["queued"] == 0, 30)
    finally:
        for process in schedulers:
            process.terminate()
            process.wait(10)
    # Then every minute from the start to the end ran exactly once
    ran: list[bytes] = r.lrange(RAN, 0, -1)  # type: ignore[assignment]
    runs = Counter(raw.decode().split("|", 1)[1] for raw in ran if raw.startswith(b"every_minute|"))
    expected = {(started + dt.timedelta(minutes=i)).isoformat() for i in range(MINUTES + 1)}
    duplicated = sum(n - 1 for n in runs.values() if n > 1)
    lost = len(expected - set(runs))
    record_result(
        "3 schedulers (2 triage scheduler, 1 periodiq actors), one SIGKILLed and restarted",
        lost,
        duplicated,
        f"{len(runs)} ticks in {MINUTES} min",
        "per-minute job; each run writes its tick to Redis",
    )
    assert (lost, duplicated) == (0, 0), runs
    assert runtime.queue_stats()[QUEUE]["duplicates_total"] >= 2 * MINUTES


def test_two_real_schedulers_send_each_tick_once(r: redis.Redis) -> None:
    # Given two schedulers against one Redis (two dynos), no worker: periodiq's own command,
    # and `triage scheduler` (periodiq's scheduler, kept alive through a failed send)
    commands = [
        [str(BIN / "periodiq"), "actors", "tests.periodic_actors"],
        [str(BIN / "triage"), "scheduler", "--app", "tests.periodic_actors"],
    ]
    schedulers = [
        subprocess.Popen(args, cwd=ROOT, env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for args in commands
    ]
    try:
        # When both have sent the current minute's tick, and then the next minute's
        def stats() -> dict[str, int]:
            row = runtime.queue_stats()[QUEUE]
            return {"queued": row["queued"], "duplicates": row["duplicates_total"]}

        wait_for(lambda: stats()["duplicates"] >= 1, 60)  # both fired one tick
        first = stats()["queued"]
        wait_for(lambda: stats()["queued"] > first and stats()["duplicates"] >= 2, 75, interval=0.5)
        time.sleep(3)  # any late send of that tick
    finally:
        for process in schedulers:
            process.terminate()
            process.wait(10)
    # Then each tick was stored once: as many messages as distinct (actor, tick), and the
    # per-minute job has two consecutive minutes
    sent = [(m["actor_name"], m["options"]["scheduled_at"]) for m in _queued_messages(r)]
    assert len(sent) == len(set(sent))
    minutes = sorted(dt.datetime.fromisoformat(tick) for actor, tick in sent if actor == "every_minute")
    assert len(minutes) >= 2
    assert minutes[1] - minutes[0] == dt.timedelta(minutes=1)


def _queued_messages(r: redis.Redis) -> list[dict[str, Any]]:
    encoder = runtime.broker.encoder
    bodies: list[bytes] = r.hvals(runtime.broker.keys(QUEUE).msgs)  # type: ignore[assignment]
    return [encoder.decode(raw) for raw in bodies]
