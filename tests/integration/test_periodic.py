"""Periodic actors: one message per tick whatever the number of schedulers (real `periodiq`
processes, and two sends of one tick), stale ticks skipped by a real worker, `skip_if_running`,
the missed-tick policy, `triage schedule`, and bad declarations refused by name."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from typing import Any

import pytest
import redis

from actors import background, runtime
from tests.helpers import BIN, ROOT, dramatiq_worker, env_with, triage, wait_for
from tests.periodic_actors import QUEUE, RAN, daily, every_five_exclusive, every_minute
from triage.cron import UTC
from triage.middleware import InvalidActorOption
from triage.middleware.periodic import Schedule


def schedule_of(actor: object) -> Schedule:
    schedule = actor.options["periodic"]  # type: ignore[attr-defined]
    assert isinstance(schedule, Schedule)
    return schedule


def send_tick(actor: object, at: dt.datetime) -> None:
    """What periodiq's scheduler does at `at`."""
    actor.send_with_options(scheduled_at=at.isoformat())  # type: ignore[attr-defined]


def test_two_schedulers_sending_one_tick_store_one_message(r: redis.Redis) -> None:
    # Given two schedulers that wake a few seconds apart within the same minute
    minute = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    # When both send the tick
    send_tick(every_minute, minute + dt.timedelta(seconds=0.4))
    send_tick(every_minute, minute + dt.timedelta(seconds=7))
    # Then one message is stored, for that minute, and the second send was a duplicate
    stats = runtime.queue_stats()[QUEUE]
    assert (stats["queued"], stats["duplicates_total"]) == (1, 1)
    # And the next minute's tick is a message of its own
    send_tick(every_minute, minute + dt.timedelta(minutes=1, seconds=1))
    assert runtime.queue_stats()[QUEUE]["queued"] == 2


def test_a_stale_tick_is_skipped_by_the_worker_and_a_fresh_one_runs(r: redis.Redis) -> None:
    # Given a per-minute job's tick from 10 minutes ago (its lateness is its period: a minute),
    # and this minute's tick
    now = dt.datetime.now(UTC)
    send_tick(every_minute, now - dt.timedelta(minutes=10))
    with dramatiq_worker("actors", "tests.periodic_actors", queues=[QUEUE]):
        wait_for(lambda: runtime.queue_stats()[QUEUE]["acked_total"] == 1, 30)
        send_tick(every_minute, now)
        wait_for(lambda: runtime.queue_stats()[QUEUE]["acked_total"] == 2, 30)
    # Then only the fresh tick ran, and the records say so
    tick = now.replace(second=0, microsecond=0).isoformat()
    assert r.lrange(RAN, 0, -1) == [f"every_minute|{tick}".encode()]
    done = triage("schedule", "--app", "tests.periodic_actors", "--json")
    row = json.loads(done.stdout)["every_minute"]
    assert (row["last_run_tick"], row["last_outcome"], row["spec"]) == (tick, "done", "* * * * *")
    assert row["last_success"] is not None
    assert row["max_lateness_seconds"] == 60


def test_a_tick_is_not_sent_while_the_previous_one_is_queued(r: redis.Redis) -> None:
    # Given an exclusive job whose last tick's message is still queued (no worker)
    schedule = schedule_of(every_five_exclusive)
    schedule._started = True  # a scheduler that has been running for a while
    tick = dt.datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    send_tick(every_five_exclusive, tick)
    # When the scheduler asks about the next tick
    # Then it is not due while the previous message is queued, and due once it is gone
    assert not schedule.validate(tick + dt.timedelta(minutes=5))
    runtime.broker.flush(QUEUE)
    assert schedule.validate(tick + dt.timedelta(minutes=5))


def test_a_starting_scheduler_fires_the_latest_missed_tick_once_within_lateness() -> None:
    # Given a daily job (lateness 1 h) and a scheduler starting at 00:20 (the 00:00 tick missed)
    cron = schedule_of(daily).cron
    fresh = Schedule(cron, actor_name="daily", max_lateness=3600, skip_if_running=False, pending=lambda _: False)
    start = dt.datetime(2026, 11, 29, 0, 20, tzinfo=UTC)
    # Then its first look fires the missed tick, and only once
    assert fresh.validate(start)
    assert not fresh.validate(start + dt.timedelta(minutes=1))
    assert fresh.tick_for(start) == dt.datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    # And a scheduler starting 2 h late fires nothing: the tick is past its lateness
    late = Schedule(cron, actor_name="daily", max_lateness=3600, skip_if_running=False, pending=lambda _: False)
    assert not late.validate(start + dt.timedelta(hours=2))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"periodic": "61 * * * *"}, "minute field '61'"),
        ({"periodic": 5}, "periodic must be a cron spec"),
        ({"periodic": "@daily", "periodic_max_lateness": -1}, "periodic_max_lateness must be seconds > 0"),
        ({"skip_if_running": True}, "need periodic"),
    ],
)
def test_a_bad_periodic_declaration_is_refused_naming_the_actor(options: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidActorOption, match=problem) as caught:

        @background(queue=QUEUE, actor_name=f"t_bad_periodic_{len(problem)}", **options)
        def t_bad_periodic() -> None: ...

    assert "t_bad_periodic" in str(caught.value)


def test_two_real_schedulers_send_each_tick_once(r: redis.Redis) -> None:
    # Given two `periodiq actors` processes against one Redis (two dynos), no worker
    args = [str(BIN / "periodiq"), "actors", "tests.periodic_actors"]
    schedulers = [
        subprocess.Popen(args, cwd=ROOT, env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
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
