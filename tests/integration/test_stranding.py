"""Nothing stranded: every message recorded in flight for a live worker is in its hands or given
back, and a delivery is settled by the id the broker handed out, whatever its payload claims.

The lost replies are real: a proxy in front of the suite's redis-server lets a fetch run in
Redis and then drops the connection before the reply arrives (`tests.faults`), so redis-py
sends the fetch again, as it does when Redis dies between a write and its reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from dramatiq.broker import MessageProxy

from actors import default, runtime
from tests import worker_actors as wa
from tests.faults import ReplyLoser
from tests.helpers import dramatiq_worker, triage, wait_for
from triage.broker.consumer import TriageConsumer

broker = runtime.broker
QUEUE = "t_strand"


@default(queue=QUEUE)
def t_strand_job(token: int) -> None: ...


@pytest.fixture
def loser(redis_url: str) -> Iterator[ReplyLoser]:
    proxy = ReplyLoser(urlsplit(redis_url).port or 6379)
    yield proxy
    proxy.close()


def _in_flight(r: redis.Redis, queue: str) -> int:
    return sum(int(r.hlen(key)) for key in r.scan_iter(f"{{triage:{queue}}}:acks:*"))


def test_messages_of_a_fetch_whose_reply_was_lost_run_on_the_same_live_worker(
    r: redis.Redis, loser: ReplyLoser
) -> None:
    # Given 60 messages queued, and a worker (1 process x 2 threads, prefetch 4) that reaches
    # Redis through a proxy that will lose the replies of its first 3 fetches after they ran
    tokens = [f"s{i}" for i in range(60)]
    for token in tokens:
        wa.record_default.send(token)
    fetch = broker.scripts["fetch"]
    r.script_load(fetch.script)  # so that the lost replies are those of fetches that ran (not NOSCRIPT)
    loser.lose_replies(fetch.sha.encode(), times=3)
    # (Dramatiq makes a consumer again 0.3 s after a connection error, rather than its default 3 s.)
    modules = ("actors", "tests.worker_actors")
    with dramatiq_worker(*modules, queues=["default"], REDIS_URL=loser.url, dramatiq_restart_delay="300") as worker:
        # When it drains the queue
        wait_for(lambda: r.llen(wa.DONE) >= len(tokens) and _in_flight(r, "default") == 0, timeout=30)
        # Then the three fetches did lose their replies, every message ran exactly once, by the
        # same live worker process, and nothing is left recorded in flight or counted running
        assert loser.lost == 3
        assert worker.process.poll() is None
        done = [raw.decode() for raw in r.lrange(wa.DONE, 0, -1)]  # type: ignore[union-attr]
        assert sorted(done) == sorted(f"default:{token}" for token in tokens)
        assert broker.counts("default") == (0, 0, 0)
        assert any("never received by it" in line for line in worker.log), "".join(worker.log)


def _rewrite(r: redis.Redis, redis_id: str, change: Any) -> None:
    """Replace the stored envelope of a queued message by `change(fields)`."""
    keys = broker.keys(QUEUE)
    fields = broker.encoder.decode(r.hget(keys.msgs, redis_id))  # type: ignore[arg-type]
    r.hset(keys.msgs, redis_id, broker.encoder.encode(change(fields)))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: {**f, "options": {k: v for k, v in f["options"].items() if k != "redis_message_id"}}, "lack"),
        (lambda f: {**f, "options": ["not", "a", "map"]}, "'options' is a list"),
        (lambda f: {**f, "options": {**f["options"], "redis_message_id": "someone-else"}}, "another message's id"),
        (lambda f: {**f, "args": "1"}, "'args' is a str"),
        (lambda f: {**f, "message_timestamp": "now"}, "'message_timestamp' is a str"),
        (lambda f: [1, 2, 3], "not a map"),
    ],
)
def test_an_envelope_of_the_wrong_shape_is_dead_lettered_and_its_neighbours_run(
    r: redis.Redis, change: Any, named: str
) -> None:
    # Given a good message, one whose stored envelope is not what a Triage producer writes, and
    # another good one
    first = t_strand_job.send(1)
    bad = t_strand_job.send(2)
    last = t_strand_job.send(3)
    bad_id = bad.options["redis_message_id"]
    _rewrite(r, bad_id, change)
    # When a consumer fetches and settles what it is given
    consumer = broker.consume(QUEUE, prefetch=10, timeout=50)
    delivered = []
    for _ in range(5):
        message = next(consumer)
        if message is not None:
            delivered.append(message.message_id)
            consumer.ack(message)
    # Then the good ones were delivered and settled; the bad one is a dead letter `undecodable`
    # whose error says what is wrong, and nothing is left running
    assert delivered == [first.message_id, last.message_id]
    info = json.loads(r.hget(broker.keys(QUEUE).dead_info, bad_id))  # type: ignore[arg-type]
    assert info["reason"] == "undecodable"
    assert named in info["error"]["message"]
    assert broker.counts(QUEUE) == (0, 0, 0)
    assert _in_flight(r, QUEUE) == 0


def test_a_delivery_is_settled_by_the_id_it_was_handed_out_under(r: redis.Redis) -> None:
    # Given a delivered message whose options are changed after the fetch (middleware, an actor)
    t_strand_job.send(1)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=50)
    message = next(consumer)
    assert message is not None
    message.options["redis_message_id"] = "something-else"
    # When it is acked
    consumer.ack(message)
    # Then the delivery it came from is settled: nothing is left running
    assert broker.counts(QUEUE) == (0, 0, 0)
    assert _in_flight(r, QUEUE) == 0


def _held_one_and_two_strays() -> tuple[TriageConsumer, MessageProxy]:
    """Four messages queued; a consumer holds the first; a fetch whose reply never arrived (the
    script run directly: no consumer saw its messages) recorded two more for this process."""
    for token in range(4):
        t_strand_job.send(token)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=50)
    held = next(consumer)
    assert held is not None
    keys = broker.shards(QUEUE)[0]
    broker.scripts["fetch"](keys=keys.fetch_keys(broker.broker_id), args=[0, 2, 1000, 0, 0, 0])
    return consumer, held


def test_a_replaced_consumer_gives_back_what_was_recorded_but_never_received(r: redis.Redis) -> None:
    # Given one message held and two recorded in flight for this process but never received
    _, running = _held_one_and_two_strays()
    assert _in_flight(r, QUEUE) == 3
    # When the worker makes a new consumer of the queue (as Dramatiq does after a connection error)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=50)
    fetched = [m for m in (next(consumer) for _ in range(4)) if m is not None]
    # Then the two strays were given back and delivered again, the held one was not touched
    assert sorted(m.args[0] for m in fetched) == [1, 2, 3]
    assert running.args[0] == 0
    for message in [running, *fetched]:
        consumer.ack(message)
    assert broker.counts(QUEUE) == (0, 0, 0)


def test_a_running_consumer_gives_back_strays_as_soon_as_a_fetch_shows_them(r: redis.Redis) -> None:
    # Given a consumer that has started (its periodic look is seconds away) and holds one message,
    # and a fetch whose reply was lost recorded two more for this worker (as when redis-py sends
    # a fetch again after a dropped connection)
    consumer, first = _held_one_and_two_strays()
    # When the consumer settles what it holds and goes on fetching
    consumer.ack(first)
    delivered = []
    for _ in range(8):
        message = next(consumer)
        if message is not None:
            delivered.append(message)
            consumer.ack(message)
    # Then its next fetch saw more recorded than held, and the strays were given back and delivered
    assert sorted(m.args[0] for m in delivered) == [1, 2, 3]
    assert broker.counts(QUEUE) == (0, 0, 0)
    assert _in_flight(r, QUEUE) == 0


def test_a_worker_process_dead_letters_wrong_envelopes_and_runs_the_rest(r: redis.Redis) -> None:
    # Given ten good messages and, between them, three whose envelopes a Triage producer would
    # not write (options without an id, options that are a list, options naming another message)
    good = [wa.record_default.send(f"g{i}") for i in range(10)]
    bad = [wa.record_default.send(f"b{i}") for i in range(3)]
    keys = broker.keys("default")
    changes = [
        lambda f: {**f, "options": {}},
        lambda f: {**f, "options": []},
        lambda f: {**f, "options": {"redis_message_id": good[0].options["redis_message_id"]}},
    ]
    for message, change in zip(bad, changes, strict=True):
        redis_id = message.options["redis_message_id"]
        fields = broker.encoder.decode(r.hget(keys.msgs, redis_id))  # type: ignore[arg-type]
        r.hset(keys.msgs, redis_id, broker.encoder.encode(change(fields)))
    # When a real worker process drains the queue and is stopped cleanly
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]) as worker:
        wait_for(lambda: r.llen(wa.DONE) >= 10 and r.zcard(keys.dead) >= 3, timeout=20)
        assert worker.process.poll() is None
    # Then the good ones ran once each, the three are dead letters `undecodable`, nothing is
    # counted running, and nothing is left in flight after the clean stop
    assert sorted(r.lrange(wa.DONE, 0, -1)) == sorted(f"default:g{i}".encode() for i in range(10))
    reasons = [json.loads(r.hget(keys.dead_info, m.options["redis_message_id"]))["reason"] for m in bad]  # type: ignore[arg-type]
    assert reasons == ["undecodable"] * 3
    assert broker.counts("default") == (0, 0, 0)
    assert _in_flight(r, "default") == 0


def test_an_undecodable_suspect_does_not_stop_the_consumer(r: redis.Redis) -> None:
    # Given a message delivered once to a worker that died (a suspect) whose envelope is wrong,
    # and a good message behind it
    bad = t_strand_job.send(1)
    good = t_strand_job.send(2)
    bad_id = bad.options["redis_message_id"]
    _rewrite(r, bad_id, lambda f: {**f, "options": {}})
    r.hset(broker.keys(QUEUE).deliveries, bad_id, 1)
    # When a consumer fetches
    consumer = broker.consume(QUEUE, prefetch=4, timeout=50)
    delivered = [m for m in (next(consumer) for _ in range(4)) if m is not None]
    # Then the suspect is dead-lettered and the good message is still delivered
    assert [m.message_id for m in delivered] == [good.message_id]
    assert r.zscore(broker.keys(QUEUE).dead, bad_id) is not None


def test_dead_letters_of_the_wrong_envelope_are_replayed_when_they_can_be_and_skipped_otherwise(
    r: redis.Redis,
) -> None:
    # Given two dead letters `undecodable` for their envelope: one whose options lack its id (a
    # producer's bug that a replay repairs), one whose options are a list
    lacking, listed = t_strand_job.send(1), t_strand_job.send(2)
    _rewrite(r, lacking.options["redis_message_id"], lambda f: {**f, "options": {}})
    _rewrite(r, listed.options["redis_message_id"], lambda f: {**f, "options": ["a", "b", "c"]})
    assert next(broker.consume(QUEUE, prefetch=4, timeout=50)) is None
    assert r.zcard(broker.keys(QUEUE).dead) == 2
    # When the operator replays the queue's dead letters
    done = triage("dlq", "requeue", "--queue", QUEUE, "--yes")
    # Then the first is queued again under a new id, the other is skipped and named, no traceback
    assert done.returncode == 0, done.stderr
    assert "requeued 1" in done.stdout
    assert f"skipped 1 that cannot be decoded: {listed.options['redis_message_id']}" in done.stderr
    assert "Traceback" not in done.stderr
    consumer = broker.consume(QUEUE, prefetch=1, timeout=50)
    replayed = next(consumer)
    assert replayed is not None
    assert replayed.args == (1,)
    consumer.ack(replayed)
