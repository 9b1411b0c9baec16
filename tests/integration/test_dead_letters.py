"""Dead letters as operators use them: list, summary, show, requeue, purge, retention."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import redis
from dramatiq import Actor
from dramatiq.broker import MessageProxy

from actors import default, runtime
from tests.helpers import BIN, ROOT, env_with, triage
from triage.admin import Admin, Filter
from triage.broker.redis_broker import TriageBroker
from triage.runtime import build
from triage.settings import load_settings

broker = runtime.broker
QUEUE = "t_dlq"


@default(queue=QUEUE)
def t_dlq_export(org: str, n: int) -> None: ...


@default(queue=QUEUE)
def t_dlq_sync(org: str, n: int) -> None: ...


def make_dead(
    actor: Actor[Any, Any],
    count: int,
    *,
    error: BaseException | None = None,
    reason: str = "exhausted",
    tenant: str = "acme",
    on: TriageBroker = broker,
    spacing_s: float = 0.0,
) -> None:
    """`count` messages of `actor` fetched and dead-lettered by the real consumer and scripts."""
    for n in range(count):
        on.enqueue(actor.message_with_options(args=(tenant, n), tenant=tenant, priority=7))
    consumer = on.consume(QUEUE, prefetch=count, timeout=50)
    for _ in range(count):
        message = next(consumer)
        assert isinstance(message, MessageProxy)
        try:
            raise error or RuntimeError("the export service is down")
        except Exception as exc:  # as a worker catches what an actor raised, traceback included
            message.stuff_exception(exc)
        on.dead_letter_as(message, reason)
        consumer.nack(message)
        time.sleep(spacing_s)


def admin() -> Admin:
    return Admin(load_settings())


def test_list_is_newest_first_filtered_and_paginated(r: redis.Redis) -> None:
    # Given dead letters of two actors, two tenants and two errors
    make_dead(t_dlq_export, 30, tenant="acme")
    make_dead(t_dlq_sync, 12, tenant="globex", error=ConnectionError("refused"), reason="dead_on")
    dead = admin().dead_letters
    # When an operator pages through every entry, 10 at a time
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = dead.page(Filter(queue=QUEUE), limit=10, cursor=cursor)
        seen += [e.id for e in page]
        assert [e.dead_lettered_at_ms for e in page] == sorted((e.dead_lettered_at_ms for e in page), reverse=True)
        if cursor is None:
            break
    # Then each entry is seen once
    assert len(seen) == len(set(seen)) == 42
    # And filters select exactly their entries, each with its fields
    by_actor, _ = dead.page(Filter(actor="t_dlq_sync"), limit=100)
    assert len(by_actor) == 12
    assert {(e.tenant, e.error_type, e.reason, e.priority, e.tier) for e in by_actor} == {
        ("globex", "ConnectionError", "dead_on", 7, "default")
    }
    assert len(dead.page(Filter(tenant="acme"), limit=100)[0]) == 30
    assert len(dead.page(Filter(error="ConnectionError", reason="dead_on"), limit=100)[0]) == 12
    assert len(dead.page(Filter(actor="t_dlq_export", error="ConnectionError"), limit=100)[0]) == 0
    assert len(dead.page(Filter(since_ms=int(time.time() * 1000) + 60_000), limit=100)[0]) == 0


@default(queue="t_dlq2")
def t_dlq_other(org: str, n: int) -> None: ...


def test_pages_across_queues_show_each_entry_once_newest_first(r: redis.Redis) -> None:
    # Given dead letters in two queues, made in turns so that their times interleave
    for _ in range(4):
        make_dead(t_dlq_export, 2)
        time.sleep(0.002)
        on_other = broker.consume("t_dlq2", prefetch=2, timeout=50)
        for n in range(2):
            broker.enqueue(t_dlq_other.message("acme", n))
        for _ in range(2):
            message = next(on_other)
            assert isinstance(message, MessageProxy)
            broker.dead_letter_as(message, "exhausted")
            on_other.nack(message)
        time.sleep(0.002)
    # When every queue is paged through, 3 at a time
    seen: list[tuple[int, str]] = []
    cursor = None
    while True:
        page, cursor = admin().dead_letters.page(limit=3, cursor=cursor)
        seen += [(e.dead_lettered_at_ms, e.id) for e in page]
        if cursor is None:
            break
    # Then each of the 16 is seen once, newest first across both queues
    assert len(seen) == len(set(seen)) == 16
    assert seen == sorted(seen, reverse=True)


def test_summary_since_counts_only_the_recent_ones(r: redis.Redis) -> None:
    # Given 4 dead letters from an hour ago (their index time rewritten) and 2 from now
    make_dead(t_dlq_export, 4)
    keys = broker.keys(QUEUE)
    hour_ago = int(time.time() * 1000) - 3_600_000
    for member in r.zrange(keys.dead_idx, 0, -1):
        assert isinstance(member, bytes)
        dim, value, _, redis_id = member.split(b"\0")
        r.zrem(keys.dead_idx, member)
        r.zadd(keys.dead_idx, {b"\0".join([dim, value, f"{hour_ago:013d}".encode(), redis_id]): 0})
    make_dead(t_dlq_export, 2)
    # When the summary is asked for the last 30 minutes, then only the 2 recent ones count
    recent = admin().dead_letters.summary(Filter(since_ms=int(time.time() * 1000) - 1_800_000))
    assert [g.count for g in recent] == [2]
    assert [g.count for g in admin().dead_letters.summary()] == [6]
    # And a tenant filter is refused, not silently ignored
    refused = triage("dlq", "summary", "--tenant", "acme")
    assert refused.returncode == 2
    assert "use `dlq list --tenant`" in refused.stderr


def test_dead_letters_from_before_the_index_are_indexed_when_listed(r: redis.Redis) -> None:
    # Given a dead letter as an earlier version stored it: no index entry, a record without actor or tenant
    message = t_dlq_export.message_with_options(args=("acme", 1), tenant="acme")
    keys = broker.keys(QUEUE)
    r.zadd(keys.dead, {"old1": 1_700_000_000_000})
    r.hset(keys.dead_msgs, "old1", broker.encoder.encode(message.asdict()))
    old_record = {"reason": "failed", "deliveries": 1, "dead_lettered_at_ms": 1_700_000_000_000}
    r.hset(keys.dead_info, "old1", json.dumps(old_record))
    # When an operator lists the queue's dead letters by actor
    page, _ = admin().dead_letters.page(Filter(queue=QUEUE, actor="t_dlq_export"))
    # Then it is found, its record completed from its message
    assert [(e.id, e.actor, e.tenant, e.reason) for e in page] == [("old1", "t_dlq_export", "acme", "failed")]
    assert r.zcard(keys.dead_idx) == 6


def test_an_idle_queue_is_trimmed_by_age(r: redis.Redis) -> None:
    # Given a runtime that keeps dead letters for about 90 ms, and 3 dead letters
    short = build(load_settings(tiers={"default": {"dead_letters_max_age_days": 0.000001}}))
    short.broker.declare_queue(QUEUE)
    make_dead(t_dlq_export, 3, on=short.broker)
    time.sleep(0.2)
    # When the retention runs with no new dead letter (as the workers' heartbeat thread runs it)
    dropped = short.broker.trim_dead_letters(QUEUE)
    # Then the old ones are gone, index and all, and counted
    assert dropped == 3
    assert r.zcard(broker.keys(QUEUE).dead) == r.zcard(broker.keys(QUEUE).dead_idx) == 0
    assert runtime.queue_stats()[QUEUE]["dead_letters_trimmed_total"] == 3
    short.broker.close()


def test_summary_walks_groups_whose_names_prefix_one_another(r: redis.Redis) -> None:
    # Given groups whose index values are prefixes of one another (reason "dead_on" and "dead_on_x")
    make_dead(t_dlq_sync, 2, reason="dead_on")
    make_dead(t_dlq_sync, 3, reason="dead_on_x")
    make_dead(t_dlq_export, 1, reason="dead_on")
    # Then each group is found once, with its own count
    rows = [(g.actor, g.reason, g.count) for g in admin().dead_letters.summary()]
    assert rows == [("t_dlq_sync", "dead_on_x", 3), ("t_dlq_sync", "dead_on", 2), ("t_dlq_export", "dead_on", 1)]
    assert [g.count for g in admin().dead_letters.summary(Filter(actor="t_dlq_sync", reason="dead_on"))] == [2]


def test_summary_groups_by_actor_error_and_reason(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 5)
    make_dead(t_dlq_sync, 3, error=ConnectionError("refused"), reason="dead_on")
    # When an operator asks what failed, as JSON
    done = triage("dlq", "summary", "--json")
    # Then one row per group, most numerous first
    assert done.returncode == 0, done.stderr
    groups = [(g["actor"], g["error_type"], g["reason"], g["count"]) for g in json.loads(done.stdout)["groups"]]
    assert groups == [("t_dlq_export", "RuntimeError", "exhausted", 5), ("t_dlq_sync", "ConnectionError", "dead_on", 3)]


def test_show_prints_the_record_the_error_and_the_message(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 1)
    (entry,), _ = admin().dead_letters.page(Filter(queue=QUEUE))
    done = triage("dlq", "show", entry.id, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["message"]["args"] == ["acme", 0]
    assert shown["error_message"] == "the export service is down"
    assert "Traceback" in shown["traceback"]
    assert triage("dlq", "show", "no-such-id").returncode == 3


def _queued(r: redis.Redis) -> list[dict[str, Any]]:
    return [broker.encoder.decode(v) for v in r.hvals(broker.keys(QUEUE).msgs)]  # type: ignore[arg-type]


def test_requeue_by_id_resets_attempts_and_keeps_priority_and_tenant(r: redis.Redis) -> None:
    # Given two dead letters
    make_dead(t_dlq_export, 2)
    page, _ = admin().dead_letters.page(Filter(queue=QUEUE))
    target = page[0]
    # When one is requeued by its id
    done = triage("dlq", "requeue", target.id, "--yes")
    # Then its message is back on its queue, attempts reset, priority and tenant kept, and it left the store
    assert done.returncode == 0, done.stderr
    assert "1 dead letter(s) to requeue" in done.stdout
    assert "requeued 1" in done.stdout
    (message,) = _queued(r)
    assert message["message_id"] == target.message_id
    assert (message["options"]["priority"], message["options"]["tenant"]) == (7, "acme")
    assert message["options"]["requeued_from"] == target.id
    assert "retries" not in message["options"]
    assert broker.counts(QUEUE)[0] == 1
    remaining, _ = admin().dead_letters.page(Filter(queue=QUEUE))
    assert [e.id for e in remaining] == [page[1].id]
    assert runtime.queue_stats()[QUEUE]["requeued_total"] == 1


def test_requeue_by_filter_and_dry_run(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 4)
    make_dead(t_dlq_sync, 3)
    # When an operator first asks how many, then requeues one actor's dead letters
    dry = triage("dlq", "requeue", "--actor", "t_dlq_sync", "--dry-run")
    assert (dry.returncode, dry.stdout.strip()) == (0, "3 dead letter(s) to requeue")
    assert broker.counts(QUEUE)[0] == 0
    done = triage("dlq", "requeue", "--actor", "t_dlq_sync", "--yes")
    # Then exactly those are back
    assert done.returncode == 0, done.stderr
    assert sorted(m["actor_name"] for m in _queued(r)) == ["t_dlq_sync"] * 3
    assert len(admin().dead_letters.page(Filter(queue=QUEUE), limit=100)[0]) == 4


def test_requeue_needs_a_selection() -> None:
    done = triage("dlq", "requeue", "--yes")
    assert done.returncode == 2
    assert "say which dead letters" in done.stderr


def test_requeue_at_a_rate(r: redis.Redis) -> None:
    # Given 41 dead letters
    make_dead(t_dlq_export, 41)
    entries = list(admin().dead_letters.matching(Filter(queue=QUEUE)))
    # When they are requeued at 20 per second
    started = time.monotonic()
    result = admin().dead_letters.requeue(entries, rate=20)
    elapsed = time.monotonic() - started
    # Then all of them are back, and it took the two seconds the rate asks for (40 intervals of 50 ms)
    assert result.done == 41
    assert broker.counts(QUEUE)[0] == 41
    assert 2.0 <= elapsed < 4.0, elapsed


def test_the_rate_option_of_the_cli(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 3)
    assert "--rate: 'fast' is not a rate" in triage("dlq", "requeue", "--all", "--rate", "fast", "--yes").stderr
    done = triage("dlq", "requeue", "--all", "--rate", "600/m", "--yes")
    assert (done.returncode, broker.counts(QUEUE)[0]) == (0, 3)


def test_the_cli_refuses_rates_that_are_not_finite_and_empty_filters(r: redis.Redis) -> None:
    # Given 3 dead letters
    make_dead(t_dlq_export, 3)
    # When the rate is not a finite number, or beyond any pace Redis keeps
    for text in ("nan", "inf", "-inf", "1e400/s", "1e9"):
        done = triage("dlq", "requeue", "--all", "--rate", text, "--yes")
        # Then a one-line error naming --rate and exit 2: no traceback
        assert done.returncode == 2, (text, done.stderr)
        assert done.stderr.startswith("triage: --rate:"), done.stderr
        assert "Traceback" not in done.stderr
    # When a filter is empty (a dead letter without tenant has tenant "": is it "no tenant" or
    # "no filter"? The dashboard's blank field is "no filter", so the CLI refuses to guess)
    done = triage("dlq", "purge", "--queue", QUEUE, "--tenant", "", "--yes")
    # Then it says so, and nothing was purged or requeued
    assert done.returncode == 2, done.stderr
    assert "--tenant: empty" in done.stderr
    assert runtime.queue_stats()[QUEUE]["dead_letters_total"] == 3
    assert broker.counts(QUEUE)[0] == 0


def test_two_operators_requeueing_at_once_enqueue_each_message_once(r: redis.Redis) -> None:
    # Given 600 dead letters
    make_dead(t_dlq_export, 600)
    # When two operators requeue the same filter at the same time, at 200/s (3 s: they overlap)
    command = [str(BIN / "triage"), "dlq", "requeue", "--queue", QUEUE, "--rate", "200/s", "--yes"]
    both = [subprocess.Popen(command, cwd=ROOT, env=env_with(), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in both]
    # Then every message is enqueued once, though the two processes went for the same entries
    assert [p.returncode for p in both] == [0, 0]
    taken = [int(o.split("; ")[1].split()[0]) if "; " in o else 0 for o in outputs]
    assert sum(taken) > 0, outputs  # they overlapped: one found entries the other had just requeued
    ids = [m["message_id"] for m in _queued(r)]
    assert len(ids) == len(set(ids)) == 600
    requeued = [int(o.split("requeued ")[1].split(";")[0]) if "requeued " in o else 0 for o in outputs]
    assert sum(requeued) == 600, outputs


def test_an_interrupted_requeue_can_be_run_again(r: redis.Redis) -> None:
    # Given 20 dead letters, of which a first requeue moved 7 before it was interrupted
    make_dead(t_dlq_export, 20)
    dead = admin().dead_letters
    everything = list(dead.matching(Filter(queue=QUEUE)))
    assert dead.requeue(everything[:7]).done == 7
    # When the same requeue is run again (on what it listed before, as a stale list would be)
    again = dead.requeue(everything)
    # Then the rest is requeued and the first 7 are not enqueued twice
    assert (again.done, again.gone) == (13, 7)
    assert len(_queued(r)) == 20


def test_undecodable_entries_are_not_requeued_but_can_be_purged(r: redis.Redis) -> None:
    # Given garbage that the consumer dead-lettered as undecodable, and one normal dead letter
    make_dead(t_dlq_export, 1)
    r.hset(broker.keys(QUEUE).msgs, "garbage", b"\xc1\xc1")
    r.rpush(broker.keys(QUEUE).levels[4], "")
    r.hset(broker.keys(QUEUE).items, "5|0|", "garbage")
    r.hset(broker.keys(QUEUE).state, mapping={"n|5|": 1, "h|5|": 0, "t|5|": 0})
    assert next(broker.consume(QUEUE, prefetch=1, timeout=50)) is None
    assert r.zcard(broker.keys(QUEUE).dead) == 2
    # When everything is requeued, the garbage is skipped and stays; purge removes it
    done = triage("dlq", "requeue", "--queue", QUEUE, "--yes")
    assert "requeued 1" in done.stdout
    assert "skipped 1 that cannot be decoded: garbage" in done.stderr
    purged = triage("dlq", "purge", "--reason", "undecodable", "--yes")
    assert "purged 1" in purged.stdout
    assert r.zcard(broker.keys(QUEUE).dead) == 0
    assert r.zcard(broker.keys(QUEUE).dead_idx) == 0  # no index entry left behind


def test_retention_drops_the_oldest_and_counts_them(r: redis.Redis) -> None:
    # Given a runtime whose default tier keeps 5 dead letters per queue
    small = build(load_settings(tiers={"default": {"dead_letters_max": 5}}))
    small.broker.declare_queue(QUEUE)
    # When 8 messages are dead-lettered, each in a millisecond of its own (retention is oldest
    # first to the millisecond: within one, the order is Redis's order of the ids)
    make_dead(t_dlq_export, 8, on=small.broker, spacing_s=0.003)
    # Then the 5 newest are kept (the messages dead-lettered last: n = 3 .. 7), their index too,
    # and the 3 dropped are counted
    kept, _ = admin().dead_letters.page(Filter(queue=QUEUE), limit=100)
    assert len(kept) == 5
    numbers = {broker.encoder.decode(p)["args"][1] for p in r.hvals(broker.keys(QUEUE).dead_msgs)}  # type: ignore[arg-type]
    assert numbers == {3, 4, 5, 6, 7}
    assert r.zcard(broker.keys(QUEUE).dead_idx) == 5 * 6
    stats = json.loads(triage("stats", "--json").stdout)["queues"][QUEUE]
    assert (stats["dead_letters_total"], stats["dead_letters_trimmed_total"]) == (5, 3)
    assert stats["dead_letters_by_reason"] == {"exhausted": 8}
    small.broker.close()


def test_purge_asks_unless_told_not_to(r: redis.Redis) -> None:
    make_dead(t_dlq_export, 3)
    declined = subprocess.run(
        [str(BIN / "triage"), "dlq", "purge", "--queue", QUEUE],
        cwd=ROOT,
        env=env_with(),
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (declined.returncode, declined.stdout.splitlines()[-1].endswith("nothing done")) == (0, True)
    assert r.zcard(broker.keys(QUEUE).dead) == 3
    done = triage("dlq", "purge", "--queue", QUEUE, "--yes")
    assert "purged 3" in done.stdout
    assert runtime.queue_stats()[QUEUE]["purged_total"] == 3
