"""Per-tenant dispatch limits in the broker's fetch, on a real Redis: rate (token bucket), burst,
in-flight cap, overrides, parking without re-enqueueing, slots given back on every settle path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage

from triage.broker.consumer import TriageConsumer
from triage.broker.errors import Backpressure
from triage.broker.inspection import queue_detail
from triage.broker.limits import NO_LIMITS, Limits, tenant_view
from triage.broker.redis_broker import TriageBroker
from triage.settings import ConfigError, load_settings

Q = "limited"


def make_broker(
    redis_url: str, defaults: Limits = NO_LIMITS, own: dict[str, Limits] | None = None, defer_ms: int = 0
) -> TriageBroker:
    return TriageBroker(
        url=redis_url,
        namespace="tl",
        middleware=[],
        heartbeat_timeout_ms=200,
        tenant_limits=lambda queue: (defaults, own or {}),
        admission_delay_ms=lambda queue: defer_ms,
    )


BrokerFactory = Callable[..., TriageBroker]


@pytest.fixture
def new_broker(redis_url: str) -> Iterator[BrokerFactory]:
    """Brokers on the suite's Redis with the given tenant limits, closed after the test."""
    made: list[TriageBroker] = []

    def factory(defaults: Limits = NO_LIMITS, own: dict[str, Limits] | None = None, defer_ms: int = 0) -> TriageBroker:
        made.append(make_broker(redis_url, defaults, own, defer_ms))
        return made[-1]

    yield factory
    for broker in made:
        broker.close()


def send(broker: TriageBroker, tenant: str, count: int, priority: int = 5) -> None:
    options: dict[str, Any] = {"priority": priority}
    if tenant:
        options["tenant"] = tenant
    broker.enqueue_batch([Message(Q, "job", (tenant, i), {}, dict(options)) for i in range(count)])


def fetch_all(consumer: TriageConsumer, count: int = 100) -> list[Any]:
    consumer._fetch(count)
    taken = list(consumer.cache)
    consumer.cache.clear()
    return taken


def tenants_of(messages: list[Any]) -> list[str]:
    return [m.args[0] for m in messages]


def test_a_tenant_at_its_in_flight_cap_is_skipped_and_the_others_are_served(
    r: redis.Redis, new_broker: BrokerFactory
) -> None:
    # Given tenant A with 10 messages and a cap of 2 in flight, tenant B with 3, and untenanted work
    broker = new_broker(defaults=(0, 0, 2, 0))
    send(broker, "A", 10)
    send(broker, "B", 3)
    send(broker, "", 2)
    consumer = broker.consume(Q, prefetch=100)
    # When a consumer asks for everything
    first = fetch_all(consumer)
    # Then A got 2, B 2 (its own cap), the shared tenant all: nothing was re-enqueued
    assert sorted(tenants_of(first)) == ["", "", "A", "A", "B", "B"]
    assert broker.counts(Q)[0] == 9  # A's 8 and B's 1 still queued, in place
    view = tenant_view(r, broker.keys(Q), int(time.time() * 1000))
    assert (view["A"]["in_flight"], view["A"]["parked"], view["A"]["queued"]) == (2, "slot", 8)
    # And the queue counts two tenants held back (A and B, each parked at one level)
    assert queue_detail(r, broker.shards, [Q])[Q]["tenants_held_back"] == 2
    # When one of A's messages is acked
    consumer.ack(next(m for m in first if m.args[0] == "A"))
    # Then exactly one more of A's comes, the next in A's order
    again = fetch_all(consumer)
    assert [(m.args[0], m.args[1]) for m in again] == [("A", 2)]


@pytest.mark.parametrize("settle", ["ack", "nack", "defer", "requeue"])
def test_every_way_a_delivery_ends_gives_its_slot_back(r: redis.Redis, new_broker: BrokerFactory, settle: str) -> None:
    # Given tenant A at its cap of 1, with a second message parked behind it
    broker = new_broker(defaults=(0, 0, 1, 0))
    send(broker, "A", 2)
    consumer = broker.consume(Q, prefetch=10)
    (message,) = fetch_all(consumer)
    assert fetch_all(consumer) == []
    # When the delivery ends by `settle`
    if settle == "ack":
        consumer.ack(message)
    elif settle == "nack":
        consumer.nack(message)
    elif settle == "defer":
        broker.defer(message, delay_ms=60_000)
        consumer.ack(message)
    else:
        consumer.requeue([message])
    # Then A may have its next message
    assert len(fetch_all(consumer)) == 1


def test_a_dead_workers_slots_come_back_through_the_reaper(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given tenant A at its cap of 1 on a worker that then stops heartbeating (kill -9)
    dead, alive = new_broker(defaults=(0, 0, 1, 0)), new_broker(defaults=(0, 0, 1, 0))
    send(dead, "A", 3)
    dead.registry.register([Q], {Q: "default"})
    assert len(fetch_all(dead.consume(Q, prefetch=10))) == 1
    survivor = alive.consume(Q, prefetch=10)
    assert fetch_all(survivor) == []
    # When the live worker's reaper runs after the heartbeat timeout
    time.sleep(0.3)
    alive.registry.register([Q], {Q: "default"})
    alive.registry.reap()
    # Then the dead worker's message is back at A's head and A may have one message again
    assert [(m.args[0], m.args[1]) for m in fetch_all(survivor)] == [("A", 0)]
    view = tenant_view(r, alive.keys(Q), int(time.time() * 1000))
    assert view["A"]["in_flight"] == 1


def test_the_token_bucket_gives_the_burst_then_the_rate(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given tenant A limited to 600/min (10/s) with a burst of 5, and 100 messages queued
    broker = new_broker(defaults=(600, 5, 0, 0))
    send(broker, "A", 100)
    consumer = broker.consume(Q, prefetch=1000)
    # When a consumer fetches (and acks) as fast as it can for 2 s
    started = time.monotonic()
    got: list[float] = []
    while time.monotonic() - started < 2.0:
        for message in fetch_all(consumer):
            got.append(time.monotonic() - started)
            consumer.ack(message)
        wait = consumer.next_eta - int(time.time() * 1000)
        time.sleep(max(0.001, min(0.05, wait / 1000)))
    # Then it got the burst at once, then 10 per second: over [0, t] never more than 5 + 10 t
    assert sum(1 for t in got if t < 0.05) == 5
    for t in got:
        assert sum(1 for u in got if u <= t) <= 5 + 10 * t + 1
    assert 5 + 10 * 1.8 <= len(got) <= 5 + 10 * 2.0 + 1
    # And the fetch told the consumer when A would be eligible (no busy loop in between)
    assert consumer.next_eta > 0


def test_a_tenant_of_its_own_gets_its_own_limits(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given a default cap of 1 in flight, and tenant "premium" allowed 4
    broker = new_broker(defaults=(0, 0, 1, 0), own={"premium": (0, 0, 4, 0)})
    send(broker, "basic", 5)
    send(broker, "premium", 5)
    consumer = broker.consume(Q, prefetch=100)
    # Then each gets its own cap
    assert sorted(tenants_of(fetch_all(consumer))) == ["basic", "premium", "premium", "premium", "premium"]
    view = tenant_view(r, broker.keys(Q), int(time.time() * 1000))
    assert view["premium"]["own_limits"]
    assert view["premium"]["max_in_flight"] == 4
    assert view["basic"]["throttled_total"] >= 1


def test_ten_thousand_parked_tenants_cost_one_fetch_then_nothing(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given 10,000 tenants with work at their cap, and 10 that are free
    broker = new_broker(defaults=(0, 0, 1, 0))
    for start in range(0, 10_000, 1000):
        broker.enqueue_batch(
            [
                Message(Q, "job", (f"t{i}", 0), {}, {"tenant": f"t{i}"})
                for i in range(start, start + 1000)
                for _ in (0, 1)
            ]
        )
    consumer = broker.consume(Q, prefetch=20_000)
    taken = fetch_all(consumer, 20_000)  # one message each: the first fetches park them all
    while len(taken) < 10_000:
        taken += fetch_all(consumer, 20_000)
    send(broker, "free", 10)
    # When a consumer fetches until the free tenant's turn comes
    fetches, got = 0, list[Any]()
    while not got and fetches < 20:
        got, fetches = fetch_all(consumer, 10), fetches + 1
    # Then the capped tenants were parked at most 1,000 per fetch, and the free tenant served
    assert tenants_of(got) == ["free"]  # capped at 1 in flight too
    assert fetches <= 11
    # And once they are parked, a fetch does not look at them again: it is cheap
    consumer.ack(got[0])
    before = r.info("commandstats")["cmdstat_evalsha"]["usec"]
    again = fetch_all(consumer, 10)
    cost_us = r.info("commandstats")["cmdstat_evalsha"]["usec"] - before
    assert tenants_of(again) == ["free"]
    assert cost_us < 5_000
    assert r.zcard(broker.keys(Q).parked) >= 10_000


def test_tenant_limits_come_from_the_tier_variables_and_config() -> None:
    # Given the operators' variables for the background tier and a config with a premium tenant
    settings = load_settings(
        {
            "TENANT_LIMITS": {
                "background": {"*": {"rpm": 60}, "acme": {"max_in_flight": 10}},
                "reports": {"*": {"rpm": 6}},
            }
        },
        tenant_rpm_background=600,
        tenant_max_in_flight_background=4,
    )
    # Then the tier's variables win over the tier's "*", a queue's own "*" wins for that queue
    assert settings.tenant_defaults("background", "background").limits() == (600, 10, 4, 0)
    assert settings.tenant_defaults("reports", "background").limits() == (6, 1, 0, 0)
    assert settings.tenant_overrides("reports", "background")["acme"].limits() == (6, 1, 10, 0)
    assert settings.tenant_defaults("critical", "critical").limits() == (0, 0, 0, 0)


def test_admission_refuses_a_tenant_over_its_pending_and_stores_nothing(
    r: redis.Redis, new_broker: BrokerFactory
) -> None:
    # Given at most 3 pending per tenant (deny), a rate of 60/min, and tenant A with 2 queued
    broker = new_broker(defaults=(60, 1, 0, 3))
    send(broker, "A", 2)
    # When A sends 2 more in a batch with B's message
    batch: list[Message[Any]] = [
        Message(Q, "job", (t, i), {}, {"tenant": t}) for t, i in (("A", 2), ("A", 3), ("B", 0))
    ]
    with pytest.raises(Backpressure) as refused:
        broker.enqueue_batch(batch)
    # Then it is refused, naming the tenant, with when to try again, and nothing of the batch is stored
    error = refused.value
    assert (error.tenant, error.queue, error.pending, error.max_pending) == ("A", Q, 2, 3)
    assert error.retry_after == 1.0  # the one message over the limit, at 60 a minute
    assert broker.counts(Q)[0] == 2
    # And B alone is admitted; A's one more is too (3 pending)
    send(broker, "B", 1)
    send(broker, "A", 1)
    with pytest.raises(Backpressure):
        send(broker, "A", 1)
    # When one of A's messages is acked, A may send one again
    consumer = broker.consume(Q, prefetch=1)
    (message,) = fetch_all(consumer, 1)
    consumer.ack(message)
    send(broker, "A", 1)
    view = tenant_view(r, broker.keys(Q), int(time.time() * 1000))
    assert (view["A"]["pending"], view["A"]["admission_denied_total"]) == (3, 3)


def test_admission_defers_a_tenant_over_its_pending_under_the_defer_policy(
    r: redis.Redis, new_broker: BrokerFactory
) -> None:
    # Given at most 2 pending per tenant, deferred by 5 s over it, and a premium tenant allowed 10
    broker = new_broker(defaults=(0, 0, 0, 2), own={"premium": (0, 0, 0, 10)}, defer_ms=5000)
    # When A sends 5 and premium 5
    send(broker, "A", 2)
    send(broker, "A", 3)
    send(broker, "premium", 5)
    # Then A's 3 over its limit wait 5 s (delayed, all stored), premium's are all queued
    queued, delayed, _ = broker.counts(Q)
    assert (queued, delayed) == (7, 3)
    view = tenant_view(r, broker.keys(Q), int(time.time() * 1000))
    assert (view["A"]["pending"], view["A"]["admission_deferred_total"]) == (5, 3)
    assert view["premium"]["admission_deferred_total"] == 0


def test_own_limits_of_any_size_are_read_by_the_scripts(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given a tenant whose own rate is a million a minute (written "1e+06" by a naive format)
    broker = new_broker(defaults=(0, 0, 1, 0), own={"big": (1_000_000, 1_000_000, 0, 0)})
    send(broker, "big", 3)
    # When a worker fetches
    consumer = broker.consume(Q, prefetch=10)
    # Then the tenant is served under its own limits (no script error, nothing stranded)
    assert tenants_of(fetch_all(consumer)) == ["big"] * 3


def test_a_producer_does_not_erase_the_limits_workers_published(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given a worker that published a tenant's own limits
    worker = new_broker(defaults=(0, 0, 1, 0), own={"premium": (0, 0, 4, 0)})
    worker.consume(Q)
    # When a producer built without them sends
    producer = new_broker()
    send(producer, "premium", 1)
    # Then the tenant keeps its own limits
    assert r.hget(worker.keys(Q).limits, "premium") is not None


def test_a_running_message_may_send_over_admission(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given a tenant at its max_pending of 1 (deny)
    broker = new_broker(defaults=(0, 0, 0, 1))
    send(broker, "A", 1)
    with pytest.raises(Backpressure):
        send(broker, "A", 1)
    # When a running message of A sends its next step (a pipeline, a callback, a fan-out)
    token = CurrentMessage._MESSAGE.set(Message(Q, "job", ("A", 0), {}, {"tenant": "A"}))
    try:
        send(broker, "A", 1)
    finally:
        CurrentMessage._MESSAGE.reset(token)
    # Then it is stored: the work was admitted with the message that sends it
    assert broker.counts(Q)[0] == 2


def test_released_slots_do_not_pile_up_wake_tokens(r: redis.Redis, new_broker: BrokerFactory) -> None:
    # Given a tenant at its cap of 1 whose messages settle 200 times while it has more queued
    broker = new_broker(defaults=(0, 0, 1, 0))
    send(broker, "A", 201)
    consumer = broker.consume(Q, prefetch=10)
    for _ in range(200):
        (message,) = fetch_all(consumer)
        fetch_all(consumer)  # A is parked for want of a slot
        consumer.ack(message)
    # Then the wake list stays bounded (idle consumers do not make a fetch per token)
    assert r.llen(broker.keys(Q).wake) <= 64


def test_a_burst_under_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="burst must be 0"):
        load_settings({"TENANT_LIMITS": {"background": {"*": {"rpm": 60, "burst": 0.5}}}})


def test_a_tenant_of_its_own_keeps_the_defaults_it_does_not_set() -> None:
    settings = load_settings({"TENANT_LIMITS": {"background": {"*": {"rpm": 600}, "acme": {"max_pending": 10}}}})
    assert settings.tenant_overrides("background", "background")["acme"].limits() == (600, 10, 0, 10)
