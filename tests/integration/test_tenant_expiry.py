"""Per-tenant bookkeeping is forgotten once the tenant has been idle long enough, on a real Redis:
nothing of 10,000 refused tenants stays after the queue drained; a tenant with work pending or in
flight, or whose rate bucket has not refilled, is kept; a tenant that comes back starts fresh and is
limited again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from triage.broker.consumer import TriageConsumer
from triage.broker.delivery import redis_id_of
from triage.broker.errors import Backpressure
from triage.broker.limits import NO_LIMITS, TENANT_SWEEP_PER_FETCH, Limits
from triage.broker.redis_broker import TriageBroker
from triage.broker.text import as_text
from triage.runtime import build
from triage.settings import ConfigError, load_settings

from .test_tenant_limits import Q, fetch_all, send, tenants_of

IDLE_MS = 300  # the idle time of these tests' brokers (the default is an hour)
PREFIX = "idle-tenant-"


@pytest.fixture
def broker_with(redis_url: str) -> Iterator[Any]:
    """Brokers on the suite's Redis with the given tenant limits and an idle time of IDLE_MS."""
    made: list[TriageBroker] = []

    def factory(defaults: Limits = NO_LIMITS) -> TriageBroker:
        made.append(
            TriageBroker(
                url=redis_url,
                namespace="tl",
                middleware=[],
                tenant_limits=lambda queue: (defaults, {}),
                tenant_idle_ms=IDLE_MS,
            )
        )
        return made[-1]

    yield factory
    for broker in made:
        broker.close()


def as_text_lenient(value: Any) -> str:
    """A stored value as text, whatever its bytes (a list entry may be a binary message)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def traces(r: redis.Redis, marker: str) -> list[str]:
    """Every key, hash field, set or zset member and list entry of the database that names `marker`."""
    found = []
    for raw in r.scan_iter(count=1000):
        kind = as_text(r.type(raw))
        if kind == "hash":
            entries: list[Any] = r.hkeys(raw)
        elif kind == "zset":
            entries = r.zrange(raw, 0, -1)
        elif kind == "set":
            entries = list(r.smembers(raw))
        elif kind == "list":
            entries = r.lrange(raw, 0, -1)
        else:
            entries = []
        key = as_text(raw)
        found += [f"{key} {entry}" for entry in [key, *map(as_text_lenient, entries)] if marker in entry]
    return found


def drain(consumer: TriageConsumer, expected: int) -> None:
    """Fetch and ack until `expected` messages were taken (acks in batches, as worker threads make them)."""
    taken = 0
    while taken < expected:
        got = fetch_all(consumer, 20_000)
        assert got, f"the queue ran dry after {taken} of {expected}"
        ids = [redis_id_of(m) for m in got]
        for start in range(0, len(ids), 1000):
            consumer._write_acks(consumer.shards[0], ids[start : start + 1000])
        taken += len(got)


def sweep(consumer: TriageConsumer, tenants: int) -> int:
    """Fetch (from an empty queue) until the sweep has had the chance to look at `tenants`: the
    number of fetches made."""
    fetches = tenants // TENANT_SWEEP_PER_FETCH + 2
    for _ in range(fetches):
        fetch_all(consumer, 10)
    return fetches


def test_ten_thousand_refused_tenants_leave_nothing_once_idle(r: redis.Redis, broker_with: Any) -> None:
    # Given 10,000 tenants under a rate limit, an in-flight cap and a max_pending of 1, each with
    # one message queued and refused once more
    tenants = 10_000
    broker = broker_with(defaults=(60_000, 5, 1, 1))
    for start in range(0, tenants, 1000):
        broker.enqueue_batch(
            [Message(Q, "job", (f"{PREFIX}{i}", 0), {}, {"tenant": f"{PREFIX}{i}"}) for i in range(start, start + 1000)]
        )
    for i in range(tenants):
        with pytest.raises(Backpressure):
            send(broker, f"{PREFIX}{i}", 1)
    assert r.hlen(broker.keys(Q).tenants) == 2 * tenants  # pending and refused, for each
    # When the queue drains and the idle time passes, with workers fetching as idle workers do
    consumer = broker.consume(Q, prefetch=20_000)
    drain(consumer, tenants)
    time.sleep(IDLE_MS / 1000 + 0.05)
    fetch_all(consumer)
    assert r.zcard(broker.keys(Q).tenants_idle) == tenants - TENANT_SWEEP_PER_FETCH  # a few a fetch
    sweep(consumer, tenants)
    # Then nothing of those tenants remains in Redis: no key, field or member names one
    left = traces(r, PREFIX)
    assert left == [], f"{len(left)} traces remain, such as {left[:3]}"
    assert r.exists(broker.keys(Q).tenants, broker.keys(Q).parked, broker.keys(Q).tenants_idle) == 0


def test_a_tenant_with_work_pending_or_in_flight_is_kept(r: redis.Redis, broker_with: Any) -> None:
    # Given a max_pending of 2 and a cap of 1 in flight: tenant "waiting" with a message delayed for
    # an hour, refused 2 more, and tenant "running" with one message running and one queued, refused 1 more
    broker = broker_with(defaults=(0, 0, 1, 2))
    broker.enqueue(Message(Q, "job", ("waiting", 0), {}, {"tenant": "waiting"}), delay=3_600_000)
    send(broker, "running", 2)
    consumer = broker.consume(Q, prefetch=10)
    (running,) = fetch_all(consumer)
    over = {"waiting": 2, "running": 1}  # what takes each over its max_pending
    for tenant, count in over.items():
        with pytest.raises(Backpressure):
            send(broker, tenant, count)
    # When the idle time passes and the sweep looks at them
    time.sleep(IDLE_MS / 1000 + 0.05)
    sweep(consumer, 2)
    # Then both are still counted: neither may send more, "running" gets nothing more while its
    # message runs
    for tenant, count in over.items():
        with pytest.raises(Backpressure):
            send(broker, tenant, count)
    assert fetch_all(consumer) == []
    fields = {as_text(field) for field in r.hkeys(broker.keys(Q).tenants)}
    assert {"p|waiting", "d|waiting", "p|running", "f|running", "d|running"} <= fields
    # And once "running"'s message is acked, it gets its next one
    consumer.ack(running)
    assert tenants_of(fetch_all(consumer)) == ["running"]


def test_a_tenant_whose_bucket_is_still_refilling_keeps_it(r: redis.Redis, broker_with: Any) -> None:
    # Given a rate of 1 a minute with a burst of 2, and tenant A that used its burst, then drained
    broker = broker_with(defaults=(1, 2, 0, 0))
    send(broker, "A", 2)
    consumer = broker.consume(Q, prefetch=10)
    for message in fetch_all(consumer):
        consumer.ack(message)
    # When the idle time passes and the sweep looks at A
    time.sleep(IDLE_MS / 1000 + 0.05)
    sweep(consumer, 1)
    # Then A's bucket is kept (forgetting it would hand A a full burst early): A's next message waits
    send(broker, "A", 1)
    assert fetch_all(consumer) == []
    assert r.hexists(broker.keys(Q).tenants, "k|A")


def test_a_tenant_that_comes_back_after_the_sweep_is_limited_again(r: redis.Redis, broker_with: Any) -> None:
    # Given tenant A under a rate limit (burst 2), a cap of 1 in flight and a max_pending of 2,
    # which sent, was refused, ran its work and went idle until the sweep forgot it
    broker = broker_with(defaults=(60_000, 2, 1, 2))
    send(broker, "A", 2)
    with pytest.raises(Backpressure):
        send(broker, "A", 1)
    consumer = broker.consume(Q, prefetch=10)
    drain(consumer, 2)
    time.sleep(IDLE_MS / 1000 + 0.05)
    sweep(consumer, 1)
    assert traces(r, "A") == []
    # When A comes back with 2 messages (its max_pending), then one more
    send(broker, "A", 2)
    with pytest.raises(Backpressure) as refused:
        send(broker, "A", 1)
    # Then its pending count starts from zero and is enforced again, as is its in-flight cap
    assert (refused.value.pending, refused.value.max_pending) == (2, 2)
    (first,) = fetch_all(consumer)
    assert fetch_all(consumer) == []
    consumer.ack(first)
    assert len(fetch_all(consumer)) == 1


@pytest.mark.parametrize("idle_ms", [0, -1, 1.5, "3600000", True])
def test_an_idle_time_that_is_not_a_positive_number_of_ms_is_refused(redis_url: str, idle_ms: Any) -> None:
    # When a broker is built with an idle time that is not a positive integer of ms
    # Then it is refused, naming the parameter and the value
    with pytest.raises(ValueError, match=rf"tenant_idle_ms must be a positive number of ms, not {idle_ms!r}"):
        TriageBroker(url=redis_url, middleware=[], tenant_idle_ms=idle_ms)


def test_the_idle_time_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an operator who wants idle tenants forgotten after ten minutes
    monkeypatch.setenv("TRIAGE_TENANT_IDLE_SECONDS", "600")
    # When a runtime is built from the environment
    runtime = build(load_settings())
    # Then its broker forgets tenants idle that long, and a value under a second is refused
    assert runtime.broker.tenant_idle_ms == 600_000
    runtime.broker.close()
    monkeypatch.setenv("TRIAGE_TENANT_IDLE_SECONDS", "0")
    with pytest.raises(ConfigError, match="TRIAGE_TENANT_IDLE_SECONDS"):
        load_settings()
