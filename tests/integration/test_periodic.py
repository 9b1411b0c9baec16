"""Periodic actors: one message per tick whatever the number of schedulers (real `periodiq`
processes, and two sends of one tick), stale ticks skipped by a real worker, `skip_if_running`,
the missed-tick policy, `triage schedule`, and bad declarations refused by name."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import pendulum
import pytest
import redis

from actors import background, runtime
from tests.helpers import dramatiq_worker, triage, wait_for
from tests.periodic_actors import QUEUE, RAN, daily, every_five_exclusive, every_minute, leap_day
from triage.admin.scheduler import ResilientScheduler
from triage.cron import UTC
from triage.middleware import InvalidActorOption
from triage.middleware.periodic import RETRY_S, Schedule


def schedule_of(actor: object) -> Schedule:
    schedule = actor.options["periodic"]  # type: ignore[attr-defined]
    assert isinstance(schedule, Schedule)
    return schedule


def every_five(
    max_lateness: float | None = None, pending: Callable[[str], bool] = lambda _: False, *, exclusive: bool = False
) -> Schedule:
    """A fresh schedule of every 5 minutes (as a newly started scheduler holds it)."""
    cron = schedule_of(every_five_exclusive).cron
    return Schedule(cron, actor_name="x", max_lateness=max_lateness, skip_if_running=exclusive, pending=pending)


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
    tick = dt.datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    schedule._checked = tick + dt.timedelta(minutes=1)  # a scheduler that has been running for a while
    send_tick(every_five_exclusive, tick)
    # When the scheduler asks about the next tick
    # Then it is not due while the previous message is queued, and due once it is gone
    assert not schedule.validate(tick + dt.timedelta(minutes=5))
    runtime.broker.flush(QUEUE)
    schedule._checked = tick + dt.timedelta(minutes=1)  # the same look again, the queue empty now
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


def test_a_late_wake_up_still_sends_its_tick_once() -> None:
    # Given a scheduler that last looked at 12:04:59 at a job of every 5 minutes
    schedule = every_five()
    schedule._checked = dt.datetime(2026, 11, 29, 12, 4, 59, tzinfo=UTC)
    # When it wakes 70 s late (a slow send, a paused VM), then again a minute later
    # Then the 12:05 tick is due once, and not again
    assert schedule.validate(dt.datetime(2026, 11, 29, 12, 6, 10, tzinfo=UTC))
    assert not schedule.validate(dt.datetime(2026, 11, 29, 12, 7, 10, tzinfo=UTC))
    # And with a lateness of 60 s, the same late wake-up sends nothing: the tick is too old
    strict = every_five(max_lateness=60)
    strict._checked = dt.datetime(2026, 11, 29, 12, 4, 59, tzinfo=UTC)
    assert not strict.validate(dt.datetime(2026, 11, 29, 12, 6, 10, tzinfo=UTC))


def test_a_scheduler_starting_just_before_a_tick_waits_for_it() -> None:
    # Given a job of every 5 minutes and a scheduler starting at 12:04:30 (12:00 missed, 12:05 near)
    fresh = every_five()
    # Then the missed tick is not sent (12:05 is less than a minute away), 12:05 is
    assert not fresh.validate(dt.datetime(2026, 11, 29, 12, 4, 30, tzinfo=UTC))
    assert fresh.validate(dt.datetime(2026, 11, 29, 12, 5, 0, tzinfo=UTC))


def test_redis_down_during_the_overlap_check_sends_the_tick() -> None:
    # Given an exclusive job whose overlap check cannot reach Redis
    def unreachable(actor: str) -> bool:
        raise redis.ConnectionError("Connection refused")

    schedule = every_five(pending=unreachable, exclusive=True)
    # Then the scheduler is told to send (the tick's key still keeps it to one), not an exception
    assert schedule.validate(dt.datetime(2026, 11, 29, 12, 5, 0, tzinfo=UTC))


def test_a_failed_send_does_not_stop_the_other_actors_and_is_retried() -> None:
    # Given two actors due at 12:05, the first one's send failing (Redis down)
    class Flaky:
        actor_name, sent = "flaky", 0

        def __init__(self, fails: bool) -> None:
            self.fails = fails
            self.options = {"periodic": every_five()}

        def send_with_options(self, **options: object) -> None:
            if self.fails:
                raise redis.ConnectionError("Connection refused")
            self.sent += 1

    failing, working = Flaky(fails=True), Flaky(fails=False)
    now = pendulum.datetime(2026, 11, 29, 12, 5, 0, tz="UTC")
    ResilientScheduler(actors=[failing, working]).send_actors([failing, working], now)
    # Then the second was sent, and the first's tick is looked at again 10 s later
    assert working.sent == 1
    schedule = failing.options["periodic"]
    assert schedule.next_valid_date(now) == now.add(seconds=RETRY_S)
    assert schedule.validate(now.add(seconds=RETRY_S))


def test_a_leap_day_or_yearly_job_keeps_its_key_within_the_broker_limit(r: redis.Redis) -> None:
    # Given a tick of a job whose period is years (29 February) or a year
    # When the scheduler sends it
    send_tick(leap_day, dt.datetime(2028, 2, 29, 0, 0, tzinfo=UTC))
    # Then it is stored (its key's lifetime is capped at the broker's limit), once
    send_tick(leap_day, dt.datetime(2028, 2, 29, 0, 0, 3, tzinfo=UTC))
    assert runtime.queue_stats()[QUEUE]["queued"] == 1


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
