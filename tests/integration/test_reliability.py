"""Delivery guarantees, fast cases: reaper, crash-loop quarantine, dead-letter reasons, outages,
graceful give-back, durable enqueue. (Process kills and Redis crashes: tests/chaos.)"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.message import Message

from actors import default, runtime
from tests import worker_actors as wa
from tests.helpers import dramatiq_worker, start_dramatiq, wait_for
from triage import delivery_count
from triage.admin.processes import descendants
from triage.admin.redis_server import RedisServer, free_port
from triage.broker.errors import ReplicationError
from triage.broker.priority import DEFAULT_PRIORITY
from triage.broker.redis_broker import TriageBroker

broker = runtime.broker


@default(queue="t_rel")
def t_rel_job(token: int) -> None: ...


@default(queue="t_rel", max_deliveries=1)
def t_fragile(token: int) -> None: ...


def dead_worker_fetches(count: int, queue: str = "t_rel") -> TriageBroker:
    """A second worker process, simulated: it registers, fetches `count` messages, then stops heartbeating."""
    other = TriageBroker(client=broker.client, namespace=broker.namespace, middleware=[])
    other.declare_queue(queue)
    other.registry.register([queue], {queue: "default"})
    consumer = other.consume(queue, prefetch=count, timeout=50)
    for _ in range(count):
        assert next(consumer) is not None
    broker.client.zadd(other.registry.heartbeats, {other.broker_id: int(time.time() * 1000) - 10 * 60_000})
    return other


def test_reaper_puts_a_dead_workers_messages_back_at_the_head(r: redis.Redis) -> None:
    # Given a worker that fetched two urgent messages of tenant acme, then died
    t_rel_job.send_with_options(args=(1,), priority=9, tenant="acme")
    t_rel_job.send_with_options(args=(2,), priority=9, tenant="acme")
    t_rel_job.send_with_options(args=(3,), priority=9, tenant="acme")
    dead = dead_worker_fetches(2)
    assert broker.counts("t_rel") == (1, 0, 2)
    # When a live worker's reaper runs
    assert broker.registry.reap() == (2, 0)
    # Then both are back ahead of the third, with priority, tenant and delivery count kept,
    # and each (a suspect now) is handed out alone: nothing more until it is settled
    consumer = broker.consume("t_rel", prefetch=10, timeout=50)
    got = []
    for _ in range(3):
        message = next(consumer)
        assert message is not None
        if delivery_count(message) > 1:
            assert next(consumer) is None
        got.append(message)
        consumer.ack(message)
    assert [m.args[0] for m in got] == [1, 2, 3]
    assert [delivery_count(m) for m in got] == [2, 2, 1]
    assert all(m.options["tenant"] == "acme" for m in got)
    # And the dead worker is forgotten; a second reap finds nothing
    assert r.zscore(broker.registry.heartbeats, dead.broker_id) is None
    assert broker.registry.reap() == (0, 0)


def test_a_message_that_keeps_killing_its_worker_is_quarantined(r: redis.Redis) -> None:
    # Given a poison message ahead of a healthy one
    t_rel_job.send(666)
    # When it is delivered to three workers that each die (max_deliveries 3)
    for attempt in range(1, 4):
        dead_worker_fetches(1)
        back, quarantined = broker.registry.reap()
        assert (back, quarantined) == ((1, 0) if attempt < 3 else (0, 1))
    t_rel_job.send(7)
    # Then it sits in the dead letters as a crash-loop, and the healthy message flows
    keys = broker.keys("t_rel")
    dead_ids: list[Any] = r.zrange(keys.dead, 0, -1)
    [dead_id] = dead_ids
    info = json.loads(r.hget(keys.dead_info, dead_id) or "{}")
    assert info["reason"] == "crash-loop"
    assert info["deliveries"] == 3
    assert info["error"]["type"] == "WorkerDied"
    assert r.hget(keys.dead_msgs, dead_id) is not None
    consumer = broker.consume("t_rel", prefetch=10, timeout=50)
    healthy = next(consumer)
    assert healthy is not None
    assert healthy.args[0] == 7
    assert runtime.queue_stats()["t_rel"]["dead_letters_total"] == 1


def test_an_actor_may_lower_its_max_deliveries(r: redis.Redis) -> None:
    t_fragile.send(1)
    dead_worker_fetches(1)
    assert broker.registry.reap() == (0, 1)


def test_graceful_give_back_lowers_the_delivery_count(r: redis.Redis) -> None:
    t_rel_job.send(1)
    consumer = broker.consume("t_rel", prefetch=2, timeout=50)
    first = next(consumer)
    assert first is not None
    assert delivery_count(first) == 1
    consumer.requeue([first])
    again = next(consumer)
    assert again is not None
    assert delivery_count(again) == 1


def test_unknown_actor_and_exhausted_retries_are_dead_lettered_with_their_reason(r: redis.Redis) -> None:
    # Given a message for an actor no worker knows (a producer deployed ahead), and one that always fails
    unknown: Message[Any] = Message(
        queue_name="default", actor_name="billing.v2.invoice", args=(1,), kwargs={}, options={}
    )
    broker.enqueue(unknown)
    wa.flaky.send("doomed", 100)
    wa.record_default.send("fine")
    # When a worker consumes the queue
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]):
        wait_for(lambda: r.zcard(broker.keys("default").dead) == 2)
        wait_for(lambda: b"default:fine" in r.lrange(wa.DONE, 0, -1))
    # Then each dead letter says why, with the last error, and keeps the raw message
    keys = broker.keys("default")
    infos = {json.loads(v)["reason"]: json.loads(v) for v in r.hvals(keys.dead_info)}
    assert set(infos) == {"unknown-actor", "exhausted"}
    assert infos["unknown-actor"]["error"]["type"] == "ActorNotFound"
    assert infos["exhausted"]["error"]["type"] == "RuntimeError"
    assert "attempt 4 fails on purpose" in infos["exhausted"]["error"]["message"]
    assert "Traceback" in infos["exhausted"]["error"]["traceback"]
    assert (infos["exhausted"]["attempts"], infos["exhausted"]["actor"]) == (4, "flaky")
    assert r.hlen(keys.dead_msgs) == 2


def test_sigterm_gives_back_unstarted_messages_at_once(r: redis.Redis) -> None:
    # Given a one-thread worker running the first of six 2-second messages
    for token in range(6):
        wa.sleepy.send(str(token), 2000)
    with dramatiq_worker("actors", "tests.worker_actors", queues=["t_slow"], threads=1) as worker:
        wait_for(lambda: r.lrange(wa.DONE, 0, -1) == [b"start:0"])
        assert broker.counts("t_slow")[2] == 2  # one running, one fetched and waiting
        # When it gets SIGTERM
        worker.process.send_signal(signal.SIGTERM)
        # Then the waiting message is back in the queue at once (Dramatiq's worker process checks
        # for the signal once a second), while the running one finishes
        wait_for(lambda: broker.counts("t_slow") == (5, 0, 1), timeout=1.5, interval=0.02)
        assert worker.process.wait(20) == 0
    assert r.lrange(wa.DONE, 0, -1) == [b"start:0", b"finish:0"]
    assert broker.counts("t_slow") == (5, 0, 0)


def test_a_platform_sigterm_to_every_process_still_lets_tasks_finish(r: redis.Redis) -> None:
    # Given a worker running a 2-second task
    wa.sleepy.send("long", 2000)
    with dramatiq_worker("actors", "tests.worker_actors", queues=["t_slow"], threads=1, new_session=True) as worker:
        wait_for(lambda: r.lrange(wa.DONE, 0, -1) == [b"start:long"])
        # When SIGTERM reaches every process, as Heroku and Render send it: the worker process
        # gets it from the platform, then again from the dramatiq parent, which forwards its own
        [child] = list(descendants(worker.process.pid))
        os.kill(child, signal.SIGTERM)
        time.sleep(0.3)
        worker.process.send_signal(signal.SIGTERM)
        # Then the worker process treats it as one request: the task finishes, nothing is killed
        assert worker.process.wait(20) == 0
    assert r.lrange(wa.DONE, 0, -1) == [b"start:long", b"finish:long"]
    assert not any("Killing worker process" in line for line in worker.log)


def test_a_task_that_outlives_the_shutdown_grace_runs_again_on_another_worker(r: redis.Redis) -> None:
    # Given a worker with a 0.3 s shutdown grace running a 4-second task (heartbeat timeout 1 s)
    wa.sleepy.send("long", 4000)
    args = ["actors", "tests.worker_actors", "--processes", "1", "--threads", "1"]
    first = start_dramatiq(
        [*args, "--worker-shutdown-timeout", "300", "--queues", "t_slow"], TRIAGE_HEARTBEAT_TIMEOUT="1"
    )
    first.wait_ready()
    wait_for(lambda: r.lrange(wa.DONE, 0, -1) == [b"start:long"])
    # When it is stopped before the task ends (the task dies with the process)
    assert first.stop() == 0
    assert broker.counts("t_slow") == (0, 0, 1)
    # Then another worker's reaper gives the message back once the heartbeat times out, and it runs again
    with dramatiq_worker("actors", "tests.worker_actors", queues=["t_slow"], threads=1, TRIAGE_HEARTBEAT_TIMEOUT="1"):
        wait_for(lambda: r.lrange(wa.DONE, 0, -1) == [b"start:long", b"start:long", b"finish:long"], timeout=20)
        wait_for(lambda: broker.counts("t_slow") == (0, 0, 0))
    assert any("still running at shutdown" in line for line in first.log)


def test_an_idle_worker_with_a_short_grace_deregisters_at_shutdown(r: redis.Redis) -> None:
    # Given an idle worker of 4 threads with a 0.3 s shutdown grace (shorter than the threads' 1 s wait for work)
    worker = start_dramatiq(["actors", "--processes", "1", "--threads", "4", "--worker-shutdown-timeout", "300"])
    worker.wait_ready()
    wait_for(lambda: len(broker.registry.worker_details()) == 1)
    # When it is stopped
    assert worker.stop() == 0
    # Then it deregistered: no task was running, however slowly its idle threads noticed the stop
    assert broker.registry.worker_details() == []
    assert not any("still running at shutdown" in line for line in worker.log)


def test_a_stopping_worker_gives_back_what_its_in_flight_record_still_holds(r: redis.Redis) -> None:
    # Given a running worker whose in-flight record holds a message it never received (written as
    # fetch.lua writes it: the body in msgs, "seq|level|tenant" in its acks, one delivery counted)
    worker = start_dramatiq(
        ["actors", "tests.worker_actors", "--processes", "1", "--threads", "2", "--queues", "default"]
    )
    worker.wait_ready()
    wait_for(lambda: len(broker.registry.worker_details()) == 1)
    [details] = broker.registry.worker_details()
    keys = broker.keys("default")
    message = wa.record_default.message("stranded")
    redis_id = "stranded-0001"
    message = message.copy(options={**message.options, "redis_message_id": redis_id})
    r.hset(keys.msgs, redis_id, broker.encoder.encode(message.asdict()))
    r.hset(keys.acks(details["id"]), redis_id, f"1|{DEFAULT_PRIORITY}|")
    r.hincrby(keys.deliveries, redis_id, 1)
    r.hincrby(keys.stats, "running", 1)
    assert broker.registry.worker_details()[0]["in_flight"] == 1
    # When it is stopped with SIGTERM
    assert worker.stop() == 0
    # Then the message is back in the queue, nothing is in flight, and the worker is deregistered
    assert broker.counts("default") == (1, 0, 0)
    assert r.exists(keys.acks(details["id"])) == 0
    assert broker.registry.worker_details() == []
    assert r.hget(broker.registry.workers, details["id"]) is None
    # And a second worker runs it
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]):
        wait_for(lambda: r.lrange(wa.DONE, 0, -1) == [b"default:stranded"])
        wait_for(lambda: broker.counts("default") == (0, 0, 0))


def test_task_arguments_stay_out_of_worker_logs(r: redis.Redis) -> None:
    # Given an actor that fails with a sensitive argument
    wa.fails_with_secret.send("4111-1111-1111-1111")
    # When a worker (default log level) runs it and logs the failure
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]) as worker:
        wait_for(lambda: r.zcard(broker.keys("default").dead) == 1)
        wait_for(lambda: any("Failed to process message" in line for line in worker.log))
    # Then the log names the actor and the message id, never the argument
    failure = next(line for line in worker.log if "Failed to process message" in line)
    assert "fails_with_secret" in failure
    assert not any("4111-1111-1111-1111" in line for line in worker.log)


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    server = RedisServer(port=free_port(), data_dir=tmp_path, appendonly=True, fsync="always").start()
    yield server
    server.stop()


def plain(queue: str, token: int) -> Message[Any]:
    return Message(queue_name=queue, actor_name="x", args=(token,), kwargs={}, options={})


def test_acks_during_an_outage_wait_and_are_applied_when_redis_returns(private_redis: RedisServer) -> None:
    # Given a fetched message on a Redis with AOF always
    own = TriageBroker(url=private_redis.url, middleware=[])
    own.declare_queue("q")
    own.enqueue(plain("q", 1))
    consumer = own.consume("q", prefetch=2, timeout=50)
    message = next(consumer)
    assert message is not None
    # When Redis goes away, the ack neither raises nor blocks, and waits
    private_redis.stop()
    started = time.monotonic()
    consumer.ack(message)
    assert time.monotonic() - started < 5
    assert len(own.backlog.pending) == 1
    # And a producer gets a clear broker connection error
    with pytest.raises(BrokerConnectionError):
        own.enqueue(plain("q", 2))
    # When Redis comes back, the ack is applied and nothing is left in flight
    private_redis.start()
    assert own.backlog.flush()
    assert own.counts("q") == (0, 0, 0)
    assert own.client.hlen(own.keys("q").msgs) == 0


def test_durable_enqueue_waits_for_a_replica(tmp_path: Path, private_redis: RedisServer) -> None:
    # Given a primary with no replica, an enqueue that requires one fails after the timeout
    own = TriageBroker(url=private_redis.url, middleware=[], min_replicas=1, replica_timeout_ms=200)
    with pytest.raises(ReplicationError, match="confirmed by 0 of 1 replica"):
        own.enqueue(plain("q", 1))
    # When a replica follows the primary, the same enqueue is confirmed
    replica = RedisServer(
        port=free_port(),
        data_dir=tmp_path / "replica",
        extra_args=("--replicaof", "127.0.0.1", str(private_redis.port)),
    ).start()
    try:
        wait_for(lambda: own.client.info("replication")["connected_slaves"] == 1, timeout=20)
        wait_for(lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up")
        own.storer.replica_timeout_ms = 5_000  # a replica that just finished its sync can take more than 200 ms to ack
        own.enqueue(plain("q", 2))
        replica_client = redis.Redis(port=replica.port)
        assert replica_client.hlen(own.keys("q").msgs) == 2
        replica_client.close()
    finally:
        replica.stop()


def test_making_a_consumer_while_redis_is_unreachable_raises_dramatiqs_connection_error() -> None:
    # Given a broker whose Redis does not answer
    unreachable = TriageBroker(url=f"redis://127.0.0.1:{free_port()}/0", middleware=[])
    # When Dramatiq's worker makes a consumer of a queue (at boot, or again after an outage)
    # Then it gets Dramatiq's connection error, which it logs in one line before trying again
    # (any other error is logged as unexpected, with a traceback, at every attempt)
    with pytest.raises(BrokerConnectionError):
        unreachable.consume("t_rel", prefetch=2, timeout=100)
    unreachable.close()
