"""A delivered message is the message `send()` returned: equal, options included, for a plain
send, a delayed send, a deferral, a retry (with only the retry policy's own options added) and a
requeued dead letter; the delivery count is read through `triage.delivery_count`, never from the
message, and no broker-internal option travels on with a re-enqueued copy."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from dramatiq.middleware import CurrentMessage

from actors import default, runtime
from tests.helpers import dramatiq_worker, wait_for
from triage import Defer, delivery_count, enqueue_batch
from triage.admin.dlq_model import Filter
from triage.admin.ops import Admin
from triage.broker.delivery import ready_at_ms
from triage.settings import load_settings

QUEUE = "t_sent"
SEEN = "test:delivered"
broker = runtime.broker


def record_current(label: str) -> None:
    """Write the message being run, as its dict, and its delivery count, to Redis."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    seen = {"label": label, "message": message.asdict(), "deliveries": delivery_count(message)}
    client().rpush(SEEN, json.dumps(seen))


def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


@default(queue=QUEUE)
def t_sent_plain(label: str, payload: dict[str, Any]) -> None:
    record_current(label)


@default(queue=QUEUE, max_retries=1, min_backoff=20, max_backoff=30)
def t_sent_fails_once(label: str) -> None:
    record_current(label)
    message = CurrentMessage.get_current_message()
    assert message is not None
    if not message.options.get("retries"):
        raise RuntimeError("the first run fails")


@default(queue=QUEUE, max_retries=0)
def t_sent_defers_once(label: str) -> None:
    record_current(label)
    if client().incr(f"test:sent:deferrals:{label}") == 1:
        raise Defer(delay_ms=30)


@default(queue=QUEUE, max_retries=0)
def t_sent_always_fails(label: str) -> None:
    record_current(label)
    if not client().exists("test:sent:healed"):
        raise RuntimeError("not yet")


def as_json(message: Any) -> Any:
    """The message's dict as it reads back from JSON (as the runs were recorded)."""
    return json.loads(json.dumps(message.asdict()))


def seen(r: redis.Redis) -> list[dict[str, Any]]:
    raws: list[bytes] = r.lrange(SEEN, 0, -1)  # type: ignore[assignment]
    return [json.loads(raw) for raw in raws]


def delivered(consumer: Any, count: int) -> list[Any]:
    """The next `count` messages the consumer hands out (within 5 s)."""
    got: list[Any] = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            got.append(message)
    return got


def test_a_consumed_message_equals_the_sent_one(r: redis.Redis) -> None:
    # Given a plain send and a delayed one
    plain = t_sent_plain.send("plain", {"n": 1, "tags": ["a", "b"]})
    delayed = t_sent_plain.send_with_options(args=("delayed", {}), delay=30)
    # When the broker delivers them
    consumer = broker.consume(QUEUE, prefetch=2, timeout=50)
    got = delivered(consumer, 2)
    # Then each is equal to what send() returned, options included, and its delivery count is 1
    assert got[0] == plain
    assert got[0].asdict() == plain.asdict()
    assert got[1].asdict() == delayed.asdict()
    # (no eta option: Dramatiq's worker would hold a message that has one back again; the broker
    # says when it became ready instead, by Redis's clock)
    assert "eta" not in got[1].options
    ready = ready_at_ms(got[1])
    assert ready is not None
    assert ready >= delayed.message_timestamp + 30 - 5  # (a few ms of clock between Redis and here)
    assert [delivery_count(m) for m in got] == [1, 1]
    assert "triage_deliveries" not in got[0].options
    for message in got:
        consumer.ack(message)


def test_a_batch_is_delivered_as_enqueue_batch_returned_it(r: redis.Redis) -> None:
    # Given a batch of a plain message and a delayed one
    sent = enqueue_batch(
        [t_sent_plain.message("one", {"k": [1, 2]}), (t_sent_plain.message_with_options(args=("two", {})), 20)]
    )
    # When the broker delivers them
    consumer = broker.consume(QUEUE, prefetch=2, timeout=50)
    got = delivered(consumer, 2)
    # Then each equals what enqueue_batch returned for it, options included
    assert [m.asdict() for m in got] == [m.asdict() for m in sent]


def test_a_deferred_message_is_delivered_again_unchanged(r: redis.Redis) -> None:
    # Given a message whose first run defers it by 30 ms
    sent = t_sent_defers_once.send("deferred")
    # When a worker runs it twice
    with dramatiq_worker("actors", "tests.integration.test_delivered_as_sent", queues=[QUEUE]):
        wait_for(lambda: len(seen(r)) == 2, 20)
    # Then both runs saw exactly the message send() returned
    assert [run["message"] for run in seen(r)] == [as_json(sent), as_json(sent)]
    assert [run["deliveries"] for run in seen(r)] == [1, 1]


def test_what_an_actor_runs_equals_what_was_sent_through_retries_and_requeues(r: redis.Redis) -> None:
    r.delete("test:sent:healed")
    # Given a plain send, a delayed send, a message that fails once, and one that is dead-lettered
    plain = t_sent_plain.send("plain", {"n": 1})
    delayed = t_sent_plain.send_with_options(args=("delayed", {"n": 2}), delay=50)
    flaky = t_sent_fails_once.send("flaky")
    doomed = t_sent_always_fails.send("doomed")
    with dramatiq_worker("actors", "tests.integration.test_delivered_as_sent", queues=[QUEUE]):
        wait_for(lambda: len(seen(r)) == 5, 20)  # plain, delayed, flaky twice, doomed once
        wait_for(lambda: runtime.queue_stats()[QUEUE]["dead_letters_total"] == 1, 10)
        # When an operator requeues the dead letter, once its cause is fixed
        r.set("test:sent:healed", 1)
        admin = Admin(load_settings())
        entries = admin.dead_letters.select([], True, Filter(queue=QUEUE))
        assert admin.dead_letters.requeue(entries).done == 1
        wait_for(lambda: len(seen(r)) == 6, 20)
    runs = {(s["label"], s["message"]["options"].get("retries", 0), "requeued_from" in s["message"]["options"]): s
            for s in seen(r)}  # fmt: skip
    # Then the plain and delayed runs are exactly what send() returned
    assert runs["plain", 0, False]["message"] == as_json(plain)
    assert runs["delayed", 0, False]["message"] == as_json(delayed)
    assert runs["flaky", 0, False]["message"] == as_json(flaky)
    assert runs["doomed", 0, False]["message"] == as_json(doomed)
    # And a retry is the sent message with the retry policy's own options only (its count and its
    # first failure) and a new delivery id
    retry = runs["flaky", 1, False]["message"]
    added = set(retry["options"]) - set(flaky.options)
    assert added == {"retries", "triage_first_failure_ms"}
    assert retry["options"]["redis_message_id"] != flaky.options["redis_message_id"]
    assert {k: v for k, v in retry.items() if k != "options"} == {
        k: v for k, v in as_json(flaky).items() if k != "options"
    }
    # And a requeued dead letter is the sent message with a new delivery id and where it came from
    requeued = runs["doomed", 0, True]["message"]
    assert set(requeued["options"]) - set(doomed.options) == {"requeued_from"}
    assert {k: v for k, v in requeued["options"].items() if k not in ("redis_message_id", "requeued_from")} == {
        k: v for k, v in doomed.options.items() if k != "redis_message_id"
    }
    # And no run saw a broker-internal option; each was a first delivery
    assert all("triage_deliveries" not in s["message"]["options"] for s in seen(r))
    assert all(s["deliveries"] == 1 for s in seen(r))


def test_a_delay_is_not_counted_as_waiting(r: redis.Redis) -> None:
    # Given a message delayed by 1.5 s, run by an idle worker as soon as it is due
    t_sent_plain.send_with_options(args=("delayed", {}), delay=1500)
    with dramatiq_worker("actors", "tests.integration.test_delivered_as_sent", queues=[QUEUE]):
        wait_for(lambda: len(seen(r)) == 1, 10)
        # When the worker's figures of the last hour are written (once a second)
        wait_for(lambda: runtime.queue_stats()[QUEUE]["succeeded_last_hour"] == 1, 10)
    # Then its wait is the time from its eta to its start, not from its send
    assert runtime.queue_stats()[QUEUE]["avg_wait_seconds_last_hour"] < 0.5
