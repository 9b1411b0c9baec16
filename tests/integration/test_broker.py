"""The Triage broker against a real Redis: order, fairness, delay, pause, batches, wake-up, prefetch."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

import msgpack
import pytest
import redis
from dramatiq.broker import MessageProxy
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import default, enqueue_batch, runtime
from tests import worker_actors
from triage.broker.consumer import TriageConsumer
from triage.middleware import InvalidPriority
from triage.runtime import build
from triage.settings import load_settings

broker = runtime.broker


@default(queue="t_q")
def t_job(token: int) -> None: ...


@default(queue="t_other")
def t_other_job(token: int) -> None: ...


def drain(consumer: TriageConsumer) -> list[Any]:
    """Every message the consumer hands out until the queue is empty, acked in turn."""
    out = []
    while (message := next(consumer)) is not None:
        out.append(message.args[0])
        consumer.ack(message)
    return out


def model_order(sent: list[tuple[int, int, str]]) -> list[int]:
    """The documented order for messages all queued before the fetch: levels 10..1, and within
    a level the tenants in turn (in order of their first message), FIFO within a tenant."""
    fifo: dict[tuple[int, str], deque[int]] = {}
    turns: dict[int, deque[str]] = {level: deque() for level in range(1, 11)}
    for token, level, tenant in sent:
        queue = fifo.setdefault((level, tenant), deque())
        if not queue:
            turns[level].append(tenant)
        queue.append(token)
    order = []
    for level in range(10, 0, -1):
        while turns[level]:
            tenant = turns[level].popleft()
            order.append(fifo[(level, tenant)].popleft())
            if fifo[(level, tenant)]:
                turns[level].append(tenant)
    return order


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10), st.sampled_from(["", "acme", "globex", "initech"])),
        min_size=1,
        max_size=60,
    )
)
def test_fetch_order_is_priority_then_tenant_round_robin_then_fifo(mix: list[tuple[int, str]]) -> None:
    # Given a random mix of priorities and tenants queued before any fetch
    broker.flush("t_q")
    sent = []
    for token, (level, tenant) in enumerate(mix):
        options: dict[str, Any] = {"priority": level}
        if tenant:
            options["tenant"] = tenant
        t_job.send_with_options(args=(token,), **options)
        sent.append((token, level, tenant))
    # When a consumer drains the queue
    consumer = broker.consume("t_q", prefetch=100, timeout=50)
    # Then the order is exactly the documented one
    assert drain(consumer) == model_order(sent)
    assert broker.counts("t_q") == (0, 0, 0)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10), st.sampled_from(["", "acme", "globex"])),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 25),
)
def test_batches_place_messages_exactly_as_single_sends_would(mix: list[tuple[int, str]], chunk: int) -> None:
    # Given the same kind of random mix, enqueued as batches of `chunk` messages
    broker.flush("t_q")
    sent = [(token, level, tenant) for token, (level, tenant) in enumerate(mix)]
    messages = []
    for token, level, tenant in sent:
        options: dict[str, Any] = {"priority": level, **({"tenant": tenant} if tenant else {})}
        messages.append(t_job.message_with_options(args=(token,), **options))
    for start in range(0, len(messages), chunk):
        enqueue_batch(messages[start : start + chunk])
    # Then the consumer sees the documented order, as for single sends
    assert drain(broker.consume("t_q", prefetch=100, timeout=50)) == model_order(sent)


def test_a_new_urgent_message_overtakes_queued_ones(r: redis.Redis) -> None:
    for token in range(5):
        t_job.send_with_options(args=(token,), priority=2)
    consumer = broker.consume("t_q", prefetch=2, timeout=50)
    first = next(consumer)
    assert first is not None
    consumer.ack(first)
    t_job.send_with_options(args=(99,), priority=10)
    # The next fetch starts with the urgent message; only the one already fetched is ahead of it
    assert drain(consumer)[:2] in ([1, 99], [99, 1])


def test_one_tenant_flood_does_not_delay_another_tenant(r: redis.Redis) -> None:
    # Given tenant A with 2,000 queued messages, then tenant B with 3, at the same priority
    enqueue_batch([t_job.message_with_options(args=(i,), tenant="A") for i in range(2000)])
    for i in range(3):
        t_job.send_with_options(args=(10_000 + i,), tenant="B")
    # When a consumer fetches
    consumer = broker.consume("t_q", prefetch=1, timeout=50)
    # Then B's messages alternate with A's instead of waiting behind 2,000
    assert drain_n(consumer, 6) == [0, 10_000, 1, 10_001, 2, 10_002]


def drain_n(consumer: TriageConsumer, n: int) -> list[Any]:
    out = []
    for _ in range(n):
        message = next(consumer)
        assert message is not None
        out.append(message.args[0])
        consumer.ack(message)
    return out


def test_delayed_message_waits_in_redis_and_keeps_its_priority_and_tenant(r: redis.Redis) -> None:
    # Given a delayed urgent message and five ready low-priority ones
    delayed = t_job.send_with_options(args=(0,), delay=300, priority=10, tenant="acme")
    for token in range(1, 6):
        t_job.send_with_options(args=(token,), priority=1)
    assert broker.counts("t_q") == (5, 1, 0)
    assert r.zcard(broker.keys("t_q").delayed) == 1
    # When it falls due, it is fetched before the low-priority ones, with its options
    time.sleep(0.35)
    consumer = broker.consume("t_q", prefetch=10, timeout=50)
    first = next(consumer)
    assert first is not None
    assert first.message_id == delayed.message_id
    assert (first.options["priority"], first.options["tenant"]) == (10, "acme")
    assert "eta" not in first.options


def test_idle_consumer_blocks_and_wakes_within_milliseconds(r: redis.Redis) -> None:
    # Given an idle consumer blocked with a 5 s timeout
    consumer = broker.consume("t_q", prefetch=1, timeout=5000)
    received: list[float] = []

    def consume() -> None:
        while not received:
            if next(consumer) is not None:
                received.append(time.perf_counter())

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.2)
    # When a message is sent
    sent_at = time.perf_counter()
    t_job.send(1)
    thread.join(5)
    # Then it is received long before the idle timeout (the bound: 100 ms, typically ~1 ms)
    assert received, "the consumer never woke"
    assert received[0] - sent_at < 0.1


def test_idle_consumer_does_not_poll(r: redis.Redis) -> None:
    # Given an idle consumer with a 1 s timeout
    consumer = broker.consume("t_q", prefetch=1, timeout=1000)
    before = round_trips(r)
    # When it waits for 2 s
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        next(consumer)
    # Then it made a fetch and a blocking wait a second, not a polling loop
    assert round_trips(r) - before <= 6


def round_trips(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval", "blpop"))


def test_waiting_for_a_delayed_message_polls_only_its_last_stretch(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an idle consumer with a 1 s timeout, and a message due in 600 ms
    consumer = broker.consume("t_q", prefetch=1, timeout=1000)
    assert next(consumer) is None  # (it has looked once: nothing ready)
    t_job.send_with_options(args=(1,), delay=600)
    before = round_trips(r)
    checks: list[float] = []  # the consumer's non-blocking checks of the wake-up list (LPOP)
    lpop = broker.client.lpop

    def counted_lpop(*args: Any, **kwargs: Any) -> Any:
        checks.append(time.monotonic())
        return lpop(*args, **kwargs)

    monkeypatch.setattr(broker.client, "lpop", counted_lpop)
    # When it waits for the message
    started = time.monotonic()
    got = None
    while got is None and time.monotonic() < started + 5:
        got = next(consumer)
    # Then it got it, having blocked until the last 150 ms (Redis's tick at hz 10, and a margin)
    # and checked the wake-up list every 10 ms only then, not for the whole 600 ms
    assert got is not None
    assert round_trips(r) - before <= 6
    assert 0 < len(checks) <= 20
    assert checks[0] - started > 0.3


def test_pause_holds_messages_and_resume_wakes_consumers(r: redis.Redis) -> None:
    # Given a paused queue with a message
    broker.pause("t_q")
    t_job.send(1)
    consumer = broker.consume("t_q", prefetch=1, timeout=100)
    # Then nothing is handed out, and stats say so
    assert next(consumer) is None
    assert runtime.queue_stats()["t_q"]["paused"] is True
    assert broker.counts("t_q") == (1, 0, 0)
    # When resumed, a blocked consumer gets it at once
    woke: list[MessageProxy] = []
    waiting = broker.consume("t_q", prefetch=1, timeout=5000)

    def consume() -> None:
        deadline = time.monotonic() + 5
        while not woke and time.monotonic() < deadline:
            message = next(waiting)
            if message is not None:
                woke.append(message)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    broker.resume("t_q")
    thread.join(5)
    assert woke
    assert woke[0].args[0] == 1
    assert time.perf_counter() - started < 0.5
    assert runtime.queue_stats()["t_q"]["paused"] is False


def test_batch_spans_queues_and_is_all_or_nothing(r: redis.Redis) -> None:
    # Given a batch with one invalid message among valid ones on two queues
    bad = [
        t_job.message(1),
        t_other_job.message_with_options(args=(2,), priority=8),
        t_job.message_with_options(args=(3,), priority=11),
    ]
    # When it is enqueued, then it is refused and nothing at all is written
    with pytest.raises(InvalidPriority, match="got 11"):
        enqueue_batch(bad)
    assert r.dbsize() == 0
    # And a valid batch lands entirely, delays included
    sent = enqueue_batch(
        [t_job.message(1), t_other_job.message_with_options(args=(2,), priority=8), (t_job.message(3), 60_000)]
    )
    assert [m.options["priority"] for m in sent] == [5, 8, 5]
    assert broker.counts("t_q") == (1, 1, 0)
    assert broker.counts("t_other") == (1, 0, 0)


def test_consumer_holds_at_most_its_prefetch_and_refetches_at_half(r: redis.Redis) -> None:
    # Given 10 messages and a consumer with prefetch 4 (a worker with 2 threads)
    enqueue_batch([t_job.message(i) for i in range(10)])
    consumer = broker.consume("t_q", prefetch=4, timeout=50)
    held = [next(consumer) for _ in range(4)]
    # Then it holds 4, fetches no more while more than 2 are outstanding
    assert [m.args[0] for m in held if m] == [0, 1, 2, 3]
    assert next(consumer) is None
    assert broker.counts("t_q") == (6, 0, 4)
    # And once 2 are settled it tops up to 4 again
    for message in held[:2]:
        assert message is not None
        consumer.ack(message)
    topped = next(consumer)
    assert topped is not None
    assert topped.args[0] == 4
    assert broker.counts("t_q") == (4, 0, 4)


def test_close_puts_fetched_messages_back_at_the_head_in_order(r: redis.Redis) -> None:
    enqueue_batch([t_job.message(i) for i in range(6)])
    consumer = broker.consume("t_q", prefetch=4, timeout=50)
    first = next(consumer)
    assert first is not None
    consumer.ack(first)
    consumer.close()  # three fetched and not handed out
    assert broker.counts("t_q") == (5, 0, 0)
    assert drain(broker.consume("t_q", prefetch=10, timeout=50)) == [1, 2, 3, 4, 5]


def test_undecodable_message_is_dead_lettered_and_the_consumer_goes_on(r: redis.Redis) -> None:
    # Given raw garbage and a valid msgpack value that is not a message, ahead of a good message
    keys = broker.keys("t_q")
    # (ENQUEUE_FIELDS: id, body, level, tenant, eta, max_deliveries, message_id; no dedup key, not shed)
    garbage = ["garbage-id", b"\xc1\xff not msgpack", 5, "", 0, 0, "garbage-id", "", "", 0, 0]
    not_a_message = ["number-id", msgpack.packb(42), 5, "", 0, 0, "number-id", "", "", 0, 0]
    broker.scripts["enqueue"](
        keys=keys.enqueue_keys(),
        args=[
            0,
            msgpack.packb(
                [[*garbage, *not_a_message]],
                use_bin_type=False,
            ),
            msgpack.packb([[0, 0]]),  # no admission limit
        ],
    )
    t_job.send(7)
    # When the consumer fetches, then the good message comes through
    consumer = broker.consume("t_q", prefetch=10, timeout=50)
    assert drain(consumer) == [7]
    # And the garbage sits in the dead letters with its raw bytes, nothing left in flight
    assert r.zscore(keys.dead, "garbage-id") is not None
    assert r.hget(keys.dead_msgs, "garbage-id") == b"\xc1\xff not msgpack"
    assert r.zscore(keys.dead, "number-id") is not None
    info = json.loads(r.hget(keys.dead_info, "garbage-id") or "{}")
    assert info["reason"] == "undecodable"
    assert info["error"]["type"] == "ExtraData" or info["error"]["type"].endswith("Error")
    assert info["deliveries"] == 1
    assert broker.counts("t_q") == (0, 0, 0)


def test_priority_out_of_range_at_send_writes_nothing(r: redis.Redis) -> None:
    with pytest.raises(InvalidPriority):
        worker_actors.record_order.send_with_options(args=("x",), priority=0)
    assert r.dbsize() == 0


def test_a_broker_encodes_with_its_own_encoder_whatever_the_global_one(r: redis.Redis) -> None:
    # Given a runtime built (not installed) while Dramatiq's global encoder is JSON
    import dramatiq
    from dramatiq.encoder import JSONEncoder

    previous = dramatiq.get_encoder()
    dramatiq.set_encoder(JSONEncoder())
    try:
        other = build(load_settings()).broker
        other.declare_queue("t_q")
        # When it enqueues, then the stored message is msgpack, as its settings say
        sent = other.enqueue(t_job.message(5))
        stored = r.hget(other.keys("t_q").msgs, sent.options["redis_message_id"])
        assert stored is not None
        assert msgpack.unpackb(stored)["args"] == [5]
        # And its consumer decodes it
        message = next(other.consume("t_q", prefetch=1, timeout=50))
        assert message is not None
        assert message.args == (5,)
    finally:
        dramatiq.set_encoder(previous)
        other.close()


def test_acks_made_together_by_many_threads_share_settle_calls_and_all_count(r: redis.Redis) -> None:
    # Given 400 messages fetched by one consumer, and a tenant holding some of them
    enqueue_batch([t_job.message_with_options(args=(i,), tenant="acme" if i % 4 else None) for i in range(400)])
    consumer = broker.consume("t_q", prefetch=400, timeout=50)
    fetched = [next(consumer) for _ in range(400)]
    assert all(message is not None for message in fetched)
    assert r.hgetall(broker.keys("t_q").tenants) != {}  # acme's messages in flight and pending
    r.config_resetstat()
    # When 8 threads ack them all at once
    start = threading.Barrier(8)

    def ack_share(share: list[Any]) -> None:
        start.wait()
        for message in share:
            consumer.ack(message)

    threads = [threading.Thread(target=ack_share, args=(fetched[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    # Then every message is acked, the queue's and the tenant's counters agree
    assert broker.counts("t_q") == (0, 0, 0)
    assert int(r.hget(broker.keys("t_q").stats, "acked_total") or 0) == 400
    assert runtime.queue_stats()["t_q"]["running"] == 0
    assert r.hgetall(broker.keys("t_q").tenants) == {}
    # And Redis ran fewer settle calls than there were acks
    settle_calls = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    assert 0 < settle_calls < 400
