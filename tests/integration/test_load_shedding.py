"""Load shedding on a real Redis: how long a queue's oldest message has waited (by Redis's
clock, held-back tenants and paused queues aside), and background admission deferred while the
critical tier waits past its SLA: counted, logged, never refused, off when asked."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.message import Message

from tests.helpers import wait_for
from triage.broker.inspection import QueueCounters, queue_stats
from triage.broker.redis_broker import TriageBroker
from triage.runtime import Runtime, build
from triage.settings import ConfigError, load_settings

Q = "waits"


@pytest.fixture
def broker(redis_url: str) -> Iterator[TriageBroker]:
    made = TriageBroker(
        url=redis_url,
        namespace="ls",
        middleware=[],
        tenant_limits=lambda queue: ((0, 0, 0, 0), {"slow": (60.0, 1.0, 0, 0)}),
    )
    yield made
    made.close()


@pytest.fixture
def shedding_runtime(redis_url: str) -> Iterator[Runtime]:
    """A runtime whose critical tier's SLA is 0.3 s, with one actor per tier."""
    runtime = build(load_settings(redis_url=redis_url, namespace="shed", tiers={"critical": {"sla_seconds": 0.3}}))
    declare(runtime, "critical", "default", "background")
    yield runtime
    runtime.broker.close()


def work(*args: Any) -> None: ...


def declare(runtime: Runtime, *tiers: str) -> None:
    """An actor `work_<tier>` on each tier's queue."""
    for tier in tiers:
        dramatiq.actor(actor_name=f"work_{tier}", queue_name=tier, broker=runtime.broker)(work)


def send(broker: TriageBroker, tenant: str, *, queue: str = Q, priority: int = 5) -> Message[Any]:
    return broker.enqueue(Message(queue, f"work_{queue}", (tenant,), {}, {"priority": priority, "tenant": tenant}))


def stats_of(broker: TriageBroker, queue: str = Q) -> QueueCounters:
    return queue_stats(broker.client, broker.shards, [queue])[queue]


def oldest_wait(broker: TriageBroker, queue: str = Q) -> float:
    return stats_of(broker, queue)["oldest_waiting_seconds"]


def eta_of(r: redis.Redis, broker: TriageBroker, message: Message[Any], queue: str) -> float | None:
    """When a stored message is due (ms), or None if it is queued, not delayed."""
    delayed: Any = r.zrange(broker.keys(queue).delayed, 0, -1, withscores=True)
    for member, score in delayed:
        if member.decode().startswith(message.options["redis_message_id"]):
            return float(score)
    return None


def test_the_oldest_wait_is_that_of_the_oldest_message_a_consumer_could_take(
    r: redis.Redis, broker: TriageBroker
) -> None:
    # Given an empty queue, then one message, then a second one 0.3 s later
    assert oldest_wait(broker) == 0.0
    send(broker, "acme")
    time.sleep(0.3)
    send(broker, "globex", priority=9)
    # Then the oldest wait is the first message's, whatever the priorities
    assert 0.3 <= oldest_wait(broker) < 1.0
    # When the consumer takes the urgent one, the first still waits; when it takes that, nothing waits
    consumer = broker.consume(Q, prefetch=1, timeout=50)
    consumer._fetch(1)
    assert oldest_wait(broker) >= 0.3
    consumer._fetch(1)
    assert oldest_wait(broker) == 0.0


def test_a_message_given_back_does_not_make_the_older_ones_behind_it_look_younger(
    r: redis.Redis, broker: TriageBroker
) -> None:
    # Given two messages of one tenant that have waited 0.3 s
    send(broker, "acme")
    send(broker, "acme")
    time.sleep(0.3)
    # When a worker takes the first and gives it back (it stops before running it)
    consumer = broker.consume(Q, prefetch=1, timeout=50)
    consumer._fetch(1)
    consumer.requeue(list(consumer.cache))
    # Then the queue's oldest message still counts as waiting since the two were sent
    assert oldest_wait(broker) >= 0.3


def test_a_tenant_held_back_by_its_rate_limit_is_not_waiting_for_a_worker(r: redis.Redis, broker: TriageBroker) -> None:
    # Given tenant "slow" (1 message a second, no burst) with 3 messages
    for _ in range(3):
        send(broker, "slow")
    consumer = broker.consume(Q, prefetch=10, timeout=50)
    # When a fetch takes its one token's worth and parks it, and time passes
    consumer._fetch(10)
    consumer._fetch(10)
    time.sleep(0.3)
    # Then its queued messages do not count as waiting
    assert stats_of(broker)["queued"] == 2
    assert oldest_wait(broker) == 0.0
    # When its next token is due and it is back in the round-robin, its oldest message counts again
    time.sleep(0.8)
    consumer._fetch(0)
    assert oldest_wait(broker) >= 1.0


def heads_as_lua_keeps_them(r: redis.Redis, broker: TriageBroker) -> dict[str, float]:
    """What the heads zset should hold: each FIFO in a round-robin list, with its head's ready time."""
    keys = broker.keys(Q)
    expected = {}
    for level, rr in enumerate(keys.levels, start=1):
        tenants: Any = r.lrange(rr, 0, -1)
        for tenant in (t.decode() for t in tenants):
            head = r.hget(keys.state, f"h|{level}|{tenant}")
            item = f"{level}|{int(head or 0)}|{tenant}"
            assert r.hget(keys.items, item) is not None
            since: Any = r.hget(keys.since, item)
            expected[f"{level}|{tenant}"] = float(since)
    return expected


def test_the_heads_follow_every_fifo_operation(r: redis.Redis, broker: TriageBroker) -> None:
    # Given random enqueues, batches, fetches, give-backs and a rate-limited tenant, over 300 steps
    rng = random.Random(7)
    consumer = broker.consume(Q, prefetch=5, timeout=50)
    for _ in range(300):
        step = rng.random()
        if step < 0.4:
            send(broker, rng.choice(["a", "b", "slow", ""]), priority=rng.choice([1, 5, 9]))
        elif step < 0.5:
            broker.enqueue_batch([Message(Q, "job", (), {}, {"tenant": rng.choice("ab")}) for _ in range(3)])
        elif step < 0.85:
            consumer._fetch(rng.randint(0, 3))
        elif consumer.cache:
            consumer.requeue(list(consumer.cache))
            consumer.cache.clear()
        # Then the heads are exactly the FIFOs in a round-robin, each at its head's ready time,
        # every queued item has its ready time and no other item has one
        rows: Any = r.zrange(broker.keys(Q).heads, 0, -1, withscores=True)
        heads = {member.decode(): score for member, score in rows}
        assert heads == heads_as_lua_keeps_them(r, broker)
        assert set(r.hkeys(broker.keys(Q).since)) == set(r.hkeys(broker.keys(Q).items))


def test_items_hold_the_bare_id_that_workers_of_an_earlier_version_read(r: redis.Redis, broker: TriageBroker) -> None:
    # Given a message queued by this version
    sent = send(broker, "acme")
    # Then its item holds its id alone (a worker still running the earlier version fetches it as before)
    assert r.hget(broker.keys(Q).items, "5|0|acme") == sent.options["redis_message_id"].encode()


def test_a_stale_head_left_by_an_earlier_version_does_not_count(r: redis.Redis, broker: TriageBroker) -> None:
    # Given a heads entry for a FIFO that a worker of an earlier version emptied (it keeps no heads)
    r.zadd(broker.keys(Q).heads, {"5|gone": 1})
    # Then nothing is waiting, and the stale entry is dropped when met
    assert oldest_wait(broker) == 0.0
    assert r.zcard(broker.keys(Q).heads) == 0


def test_a_due_delayed_message_that_no_fetch_has_moved_is_waiting(r: redis.Redis, broker: TriageBroker) -> None:
    # Given a message delayed by 0.1 s, and no worker fetching (all busy)
    broker.enqueue(Message(Q, "job", (), {}, {}), delay=100)
    # When 0.5 s have passed, then it has waited about 0.4 s
    time.sleep(0.5)
    assert 0.3 <= oldest_wait(broker) < 1.0


def test_background_admission_defers_while_critical_waits_past_its_sla(
    r: redis.Redis, shedding_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    broker = shedding_runtime.broker
    # Given a critical message that no worker has taken for longer than the tier's 0.3 s SLA
    send(broker, "acme", queue="critical")
    time.sleep(0.5)
    # When background and default work is sent
    with caplog.at_level(logging.INFO, logger="triage.broker.shedding"):
        before = time.time() * 1000
        held = send(broker, "acme", queue="background")
        own_delay = broker.enqueue(Message("background", "work_background", (), {}, {"tenant": "acme"}), delay=60_000)
        other = send(broker, "acme", queue="default")
    # Then the background message is stored, delayed by the 30 s hold, and counted; the default one is not
    assert (eta_of(r, broker, held, "background") or 0) >= before + 29_000
    assert (eta_of(r, broker, own_delay, "background") or 0) >= before + 59_000
    assert eta_of(r, broker, other, "default") is None
    stats = shedding_runtime.queue_stats()
    assert stats["background"]["shed_total"] == 1
    assert stats["background"]["delayed"] == 2
    assert [rec.levelname for rec in caplog.records] == ["WARNING"]
    assert "queue 'critical'" in caplog.text
    assert "(over 0.3 s)" in caplog.text
    # When the critical message is taken, within a second background work is admitted at once again
    broker.consume("critical", prefetch=1, timeout=50)._fetch(1)
    sent: list[Message[Any]] = []

    def admitted_at_once() -> bool:
        sent.append(send(broker, "acme", queue="background"))
        return eta_of(r, broker, sent[-1], "background") is None

    with caplog.at_level(logging.INFO, logger="triage.broker.shedding"):
        wait_for(admitted_at_once, 3)
    assert "Load shedding off" in caplog.text
    # And every message held was counted, the one admitted at once was not
    assert shedding_runtime.queue_stats()["background"]["shed_total"] == 1 + len(
        sent[:-1]
    )  # `held`, then each sent before the one admitted


def test_a_paused_critical_queue_is_not_a_reason_to_shed(r: redis.Redis, shedding_runtime: Runtime) -> None:
    # Given a critical message waiting past the SLA in a queue an operator paused
    broker = shedding_runtime.broker
    send(broker, "acme", queue="critical")
    broker.pause("critical")
    time.sleep(0.5)
    # When background work is sent, then it is queued at once
    assert eta_of(r, broker, send(broker, "acme", queue="background"), "background") is None


def test_load_shedding_can_be_turned_off_and_never_sheds_critical(redis_url: str, r: redis.Redis) -> None:
    # Given load shedding turned off
    runtime = build(
        load_settings(
            redis_url=redis_url, namespace="shed", load_shedding=False, tiers={"critical": {"sla_seconds": 0.3}}
        )
    )
    declare(runtime, "critical", "background")
    send(runtime.broker, "acme", queue="critical")
    time.sleep(0.5)
    # When background work is sent, then it is queued at once
    assert eta_of(r, runtime.broker, send(runtime.broker, "acme", queue="background"), "background") is None
    runtime.broker.close()
    # And the critical tier cannot be one that is shed
    with pytest.raises(ConfigError, match="TRIAGE_LOAD_SHEDDING_TIERS"):
        load_settings(load_shedding_tiers=["background", "critical"])


def test_producers_check_the_critical_wait_once_a_second_not_per_send(
    r: redis.Redis, shedding_runtime: Runtime
) -> None:
    # Given a producer process sending 300 background messages in about a second
    broker = shedding_runtime.broker
    r.config_resetstat()
    started = time.monotonic()
    for _ in range(300):
        send(broker, "acme", queue="background")
    elapsed = time.monotonic() - started
    # Then it read the critical queues' wait at most once per second (a ZRANGE of the heads each)
    reads = int(r.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0))
    assert 1 <= reads <= elapsed + 1
