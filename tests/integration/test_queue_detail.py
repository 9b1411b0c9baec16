"""What `triage stats` adds to a queue's counters: depth per priority, the queued messages' mean
age, tenants held back, and the last hour from the per-minute buckets workers write."""

from __future__ import annotations

import time

import redis

from actors import critical, runtime
from triage.broker.hourly import KEEP_SECONDS, MINUTES, current_minute, last_hour, record
from triage.broker.inspection import AGE_SAMPLE

QUEUE = "t_detail"


@critical(queue=QUEUE)
def t_detail_job(n: int) -> None: ...


def test_depth_per_priority_counts_every_queued_message_at_its_level(r: redis.Redis) -> None:
    # Given 3 messages at priority 10, 2 at 4 (two tenants) and 1 delayed (not queued)
    for n in range(3):
        t_detail_job.send_with_options(args=(n,), priority=10)
    for tenant in ("acme", "globex"):
        t_detail_job.send_with_options(args=(0,), priority=4, tenant=tenant)
    t_detail_job.send_with_options(args=(0,), priority=4, delay=60_000)
    # When the stats are read
    row = runtime.queue_stats()[QUEUE]
    # Then each level has its queued messages, every level is present, and they add up to the depth
    assert row["queued_by_priority"] == {str(level): {10: 3, 4: 2}.get(level, 0) for level in range(1, 11)}
    assert sum(row["queued_by_priority"].values()) == row["queued"] == 5


def test_mean_age_of_queued_messages_is_exact_under_the_sample_size(r: redis.Redis) -> None:
    # Given 2 messages sent 1.5 s apart, and nothing queued in another queue
    t_detail_job.send(1)
    time.sleep(1.5)
    t_detail_job.send(2)
    # When the stats are read at once
    row = runtime.queue_stats()[QUEUE]
    # Then the mean age is about (1.5 + 0) / 2, and an empty queue's is 0
    assert 0.7 <= row["avg_queue_age_seconds"] <= 1.2
    assert runtime.queue_stats()["background"]["avg_queue_age_seconds"] == 0.0


def test_mean_age_is_estimated_from_a_sample_past_its_size(r: redis.Redis) -> None:
    # Given 3 x AGE_SAMPLE messages that have all waited about a second
    for n in range(3 * AGE_SAMPLE):
        t_detail_job.send(n)
    time.sleep(1.0)
    # When the stats are read
    row = runtime.queue_stats()[QUEUE]
    # Then the estimate is about a second (every message is between 1 and 1 + send time old)
    assert 1.0 <= row["avg_queue_age_seconds"] <= 5.0


def test_last_hour_sums_sixty_minutes_and_nothing_older(r: redis.Redis) -> None:
    # Given buckets written for the current minute, the oldest minute of the hour, and one before it
    keys = runtime.broker.keys
    now = current_minute()
    record(r, keys, {(QUEUE, "done"): 5, (QUEUE, "runs"): 5, (QUEUE, "run_ms"): 500}, now)
    record(r, keys, {(QUEUE, "done"): 2, (QUEUE, "failed"): 1, (QUEUE, "dead"): 1}, now - MINUTES + 1)
    record(r, keys, {(QUEUE, "done"): 100}, now - MINUTES)
    # When the last hour is read
    hour = last_hour(r, keys, [QUEUE])[QUEUE]
    # Then the minute before the hour is left out, and the means are per run
    assert (hour["succeeded_last_hour"], hour["failed_last_hour"], hour["dead_lettered_last_hour"]) == (7, 1, 1)
    assert hour["avg_run_seconds_last_hour"] == 0.1
    # And every bucket expires on its own, about an hour after its minute
    ttl = r.ttl(keys(QUEUE).minute(now))
    assert KEEP_SECONDS - 120 <= ttl <= KEEP_SECONDS


def test_depth_per_priority_is_recounted_when_an_earlier_version_left_no_counters(r: redis.Redis) -> None:
    # Given 4 messages at priority 7 and 2 at 3, queued as a worker of an earlier version would
    # leave them: the FIFOs without the per-level counters
    for n in range(4):
        t_detail_job.send_with_options(args=(n,), priority=7)
    for n in range(2):
        t_detail_job.send_with_options(args=(n,), priority=3, tenant="acme")
    state = runtime.broker.keys(QUEUE).state
    r.hdel(state, *[f"q|{level}" for level in range(1, 11)])
    # When the stats are read
    row = runtime.queue_stats()[QUEUE]
    # Then the depth per level is recounted from the FIFOs, and the counters written back
    assert {k: v for k, v in row["queued_by_priority"].items() if v} == {"7": 4, "3": 2}
    assert r.hget(state, "q|7") == b"4"
    # And a fetch keeps them right from there on
    consumer = runtime.broker.consume(QUEUE, prefetch=1, timeout=50)
    next(consumer)
    assert runtime.queue_stats()[QUEUE]["queued_by_priority"]["7"] == 3
