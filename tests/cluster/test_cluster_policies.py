"""Triage's policies on a real Redis Cluster: circuit breakers shared by processes (state, pub/sub
invalidation), the reaper of a dead worker's messages over a sharded queue, deduplication, and
Dramatiq's group callbacks, results and pipelines, run by the installed stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.message import Message

from tests.chaos.harness import Ledger
from tests.cluster.test_cluster_broker import keyspace
from tests.helpers import BIN, ROOT, env_with, wait_for
from triage.admin.redis_cluster import LocalCluster
from triage.broker.breaker_state import BreakerSpec, CircuitStore
from triage.broker.connection import client_from_url
from triage.broker.delivery import delivery_count, shard_of
from triage.broker.redis_broker import TriageBroker
from triage.middleware.circuit import Breaker, CircuitOpen

SHARDED = json.dumps({"hot": {"tier": "default", "shards": 3}})
RESULT = re.compile(r"[0-9a-f]{32}")  # Dramatiq's result key: an MD5 of the namespace, queue, actor and message id
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(@events)?")


@pytest.fixture
def stores(cluster_url: str) -> Iterator[list[CircuitStore]]:
    made = [CircuitStore(client=client_from_url(cluster_url), namespace="cl") for _ in range(2)]
    yield made
    for store in made:
        store.close()


def test_a_breaker_opens_for_every_process_and_their_caches_follow(stores: list[CircuitStore]) -> None:
    # Given process A caching the breaker closed, subscribed to its transitions (pub/sub on the cluster)
    spec = BreakerSpec("bank", failure_threshold=2, recovery_ms=60_000)
    a, b = Breaker(spec, stores[0]), Breaker(spec, stores[1])
    a.finish(a.permit(), None)
    wait_for(lambda: stores[0]._listener is not None and stores[0]._listener.live, timeout=5)
    a.finish(a.permit(), None)
    assert stores[0]._cached("bank") is not None
    # When process B sees two failures
    for _ in range(2):
        b.finish(b.permit(), RuntimeError("down"))
    # Then A drops its cached state and refuses calls, and the state reads open
    wait_for(lambda: stores[0]._cached("bank") is None, timeout=5)
    with pytest.raises(CircuitOpen):
        a.permit()
    assert stores[0].status(["bank"])["bank"]["state"] == "open"
    # And an operator's reset closes it for both
    stores[1].reset(spec)
    a.finish(a.permit(), None)


def test_the_reaper_takes_back_a_dead_workers_messages_in_every_shard(cluster_url: str) -> None:
    # Given a worker that fetched messages from the three shards of `hot`, then died
    def make() -> TriageBroker:
        broker = TriageBroker(
            url=cluster_url, namespace="cl", middleware=[], shards=lambda q: 3, heartbeat_timeout_ms=200
        )
        broker.declare_queue("hot")
        return broker

    alive, dead = make(), make()
    alive.enqueue_batch([Message("hot", "job", (i,), {}, {"tenant": f"t{i}"}) for i in range(9)])
    dead.registry.register(["hot"], {"hot": "default"})
    consumer = dead.consume("hot", prefetch=20, timeout=50)
    for _ in range(3):  # a shard per fetch, in turn
        consumer._fetch(20)
    assert len(consumer.cache) == 9
    assert {shard_of(m) for m in consumer.cache} == {0, 1, 2}
    assert alive.counts("hot") == (0, 0, 9)
    # When its heartbeat is old and a live worker's reaper runs
    time.sleep(0.3)
    assert alive.registry.reap() == (9, 0)
    # Then every message is back in its shard, delivered a second time
    again = alive.consume("hot", prefetch=20, timeout=50)
    taken: list[Any] = []
    for _ in range(30):
        if len(taken) == 9:
            break
        if again._fetch(20):  # a suspect is handed out alone: settled before the next fetch
            taken += again.cache
            for message in again.cache:
                again.ack(message)
            again.cache.clear()
    assert sorted(m.args[0] for m in taken) == list(range(9))
    assert {delivery_count(m) for m in taken} == {2}


def test_a_dedup_key_is_held_once_on_a_sharded_queue(cluster_url: str) -> None:
    # Given a sharded queue, and a message with a dedup key and no tenant
    broker = TriageBroker(url=cluster_url, namespace="cl", middleware=[], shards=lambda q: 3)
    options = {"dedup_key": "invoice-7", "dedup_mode": "until_done", "dedup_ttl": 60}
    # When it is sent five times
    sent = [broker.enqueue(Message("hot", "job", (i,), {}, dict(options))) for i in range(5)]
    # Then one is stored (its shard is the key's), the others are duplicates of it
    assert broker.counts("hot")[0] == 1
    assert {m.options.get("duplicate_of", m.message_id) for m in sent} == {sent[0].message_id}


PRODUCER = textwrap.dedent(
    """
    from dramatiq import group, pipeline
    import tests.cluster.cluster_actors as ca
    from triage.testing import run_queued

    g = group([ca.double.message(i) for i in range(5)])
    g.add_completion_callback(ca.collect.message("group-done"))
    g.run()
    p = pipeline([ca.double.message(1), ca.double.message()]).run()
    tick = "2026-01-01T00:05:00+00:00"
    sent = [ca.tick.send_with_options(scheduled_at=tick) for _ in range(3)]  # three schedulers, one tick
    run_queued(queues=["default", "hot"], timeout=60)
    assert [bool(m.options.get("duplicate_of")) for m in sent] == [False, True, True], sent
    print(sorted(g.get_results(block=True, timeout=10_000)), p.get_result(block=True, timeout=10_000))
    """
)


@pytest.mark.timeout(120)
def test_group_callbacks_results_and_pipelines_run_on_a_cluster(
    cluster: LocalCluster, cluster_url: str, tmp_path: Path
) -> None:
    # Given an app whose REDIS_URL is the cluster, with its full middleware stack
    ledger = Ledger(tmp_path / "ledger")
    env = env_with(REDIS_URL=cluster_url, TRIAGE_QUEUES=SHARDED, CLUSTER_LEDGER=str(ledger.path))
    # When it runs a group with a completion callback and a two-step pipeline
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=100
    )
    # Then the results come back, and the callback ran once
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 2, 4, 6, 8] 4"
    assert ledger.finished()["group-done"] == 1
    assert ledger.finished()["tick"] <= 1  # a tick this old may be skipped as late; never run twice
    schedule = subprocess.run([str(BIN / "triage"), "schedule", "--json", "--app", "tests.cluster.cluster_actors"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert schedule.returncode == 0, schedule.stderr[-2000:]
    assert "tick" in schedule.stdout
    # And every key it left is hash-tagged, but the results' and the group barrier's: each is
    # written and read by single-key commands, and spread over the nodes on purpose
    untagged = [k for k in keyspace(cluster) if not k.startswith("{")]
    assert untagged
    assert all(RESULT.fullmatch(k) or UUID.fullmatch(k) for k in untagged), untagged
