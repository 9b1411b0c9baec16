"""Real processes on a real Redis Cluster: `dramatiq` workers, the `triage` CLI and web process,
and faults: a master killed and restarted with its AOF, a `CLUSTER FAILOVER` while producing, and a
master killed whose replica the cluster promotes by itself (automatic failover).

Lost = acknowledged enqueues (`send` returned) whose actor never finished, by a ledger file kept
outside Redis; duplicated = finished more than once."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from tests.chaos.harness import Ledger
from tests.helpers import dramatiq_worker, env_with, triage, wait_for
from tests.web_helpers import serving
from triage.admin.processes import children
from triage.admin.redis_cluster import LocalCluster
from triage.broker.redis_broker import TriageBroker
from triage.testing import redis_cluster

SHARDED = json.dumps({"hot": {"tier": "default", "shards": 3}})
TOKEN = "cluster-test-token-0123456789"


def cluster_env(url: str, ledger: Path, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": url,
        "TRIAGE_QUEUES": SHARDED,
        "CLUSTER_LEDGER": str(ledger),
        "TRIAGE_HEARTBEAT_TIMEOUT": "2",
        **extra,
    }


def producer(url: str, **options: Any) -> TriageBroker:
    """A producer as a web app would hold one: the bare broker, with the workers' shards."""
    return TriageBroker(url=url, middleware=[], shards=lambda queue: 3 if queue == "hot" else 1, **options)


def send(broker: TriageBroker, actor: str, token: str) -> None:
    broker.enqueue(Message("hot" if actor == "write" else "default", actor, (token,), {}, {}))


@contextmanager
def workers(env: dict[str, str], count: int = 1, threads: int = 4) -> Iterator[list[Any]]:
    """`count` worker processes of the cluster actors, on `hot` and `default`."""
    options: dict[str, Any] = {"queues": ["hot", "default"], "threads": threads, **env}
    with contextlib.ExitStack() as stack:
        modules = ("actors", "tests.cluster.cluster_actors")
        yield [stack.enter_context(dramatiq_worker(*modules, **options)) for _ in range(count)]


def longest_pause(ledger: Ledger) -> float:
    """The longest time between two finishes: how long the fault stopped the work."""
    finishes = sorted(at for at, event, _, _ in ledger.events() if event == "finish")
    return max((b - a for a, b in itertools.pairwise(finishes)), default=0.0)


def outcome(ledger: Ledger, acknowledged: set[str]) -> tuple[int, int]:
    finished = ledger.finished()
    return len([t for t in acknowledged if not finished[t]]), len([t for t in acknowledged if finished[t] > 1])


@pytest.mark.timeout(180)
def test_workers_cli_and_web_work_on_a_cluster(cluster_url: str, tmp_path: Path) -> None:
    # Given two worker processes on a 3-master cluster, with queue `hot` in three shards
    ledger = Ledger(tmp_path / "ledger")
    env = cluster_env(cluster_url, ledger.path)
    broker = producer(cluster_url)
    with workers(env, count=2):
        # When 300 messages go to `hot` (single sends and a batch) and 100 to `default`
        tokens = [f"h{i}" for i in range(300)] + [f"d{i}" for i in range(100)]
        for token in tokens[:150]:
            send(broker, "write", token)
        broker.enqueue_batch([Message("hot", "write", (t,), {}, {}) for t in tokens[150:300]])
        for token in tokens[300:]:
            send(broker, "note", token)
        guarded = [f"g{i}" for i in range(60)]
        broker.enqueue_batch([Message("hot", "guarded", (t,), {}, {}) for t in guarded])
        tokens += guarded
        # Then every one runs once (those behind the actor limits and the breaker too)
        wait_for(lambda: sum(ledger.finished().values()) >= len(tokens), timeout=90)
        assert outcome(ledger, set(tokens)) == (0, 0)
        # And the CLI reads the queues from the cluster: `hot` is one row, its shards summed
        wait_for(lambda: broker.counts("hot") == (0, 0, 0), timeout=30)

        def hot_stats() -> dict[str, Any]:
            stats = triage("stats", "--json", env=env_with(**env))
            assert stats.returncode == 0, stats.stderr
            row: dict[str, Any] = json.loads(stats.stdout)["queues"]["hot"]
            return row

        # (the workers' per-minute figures are written about once a second)
        wait_for(lambda: hot_stats()["succeeded_last_hour"] == 360, timeout=20, interval=0.5)
        hot = hot_stats()
        assert (hot["enqueued_total"], hot["queued"]) == (360, 0)
        assert hot["acked_total"] + hot["deferred_total"] >= 360  # a run over the limits is deferred, then runs
        # And the web process serves its API and the dashboard from the cluster
        with serving(**env, TRIAGE_ADMIN_TOKEN=TOKEN) as web:
            assert web.get("/readyz")[0] == 200
            status, body = web.get("/api/v1/admin/queue/stats", token=TOKEN)
            assert status == 200, body
            assert json.loads(body)["queues"]["hot"]["enqueued_total"] == 360
            status, body = web.get("/metrics", token=TOKEN)
            assert status == 200
            assert 'queue="hot"' in body


def produce(
    send_one: Callable[[str], object], stop: threading.Event, acknowledged: list[str], refused: list[tuple[float, str]]
) -> None:
    """Send tokens p0 .. p599 steadily with `send_one`; a refused send (when, error type) is sent again."""
    i = 0
    while not stop.is_set() and i < 600:
        token = f"p{i}"
        try:
            send_one(token)
            acknowledged.append(token)
            i += 1
        except Exception as exc:  # counted: an outage refuses sends, the producer tries again
            refused.append((time.time(), type(exc).__name__))
            time.sleep(0.05)
        time.sleep(0.01)


def stream_through(
    fault: Callable[[], None], send_one: Callable[[str], object], ledger: Ledger, *, finish_s: float
) -> tuple[list[str], list[tuple[float, str]]]:
    """A producer streams 600 sends (`produce`) while the caller's workers run them; `fault` strikes
    once 100 are acknowledged. Returns the acknowledged tokens, once each has run or `finish_s`
    after the producer ended, and the refused sends (a loss is counted by the caller)."""
    acknowledged: list[str] = []
    refused: list[tuple[float, str]] = []
    stop = threading.Event()
    thread = threading.Thread(target=produce, args=(send_one, stop, acknowledged, refused))
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 100, timeout=30)
        fault()
        thread.join(150)
        with contextlib.suppress(AssertionError):  # a loss is counted by the caller, not raised here
            wait_for(lambda: all(ledger.finished()[t] for t in acknowledged), timeout=finish_s)
    finally:
        stop.set()
        thread.join(30)
    return acknowledged, refused


def through_a_fault(
    env: dict[str, str], broker: TriageBroker, ledger: Ledger, fault: Callable[[], None]
) -> tuple[set[str], int]:
    """A producer sends 600 messages to `hot` steadily (sending again what an outage refused)
    while a worker runs them; `fault` strikes once 100 are acknowledged. Returns the acknowledged
    tokens, once each has run or the wait for them ended, and how many sends were refused."""
    with workers(env):
        sent, refused = stream_through(fault, lambda token: send(broker, "write", token), ledger, finish_s=90)
    acknowledged = set(sent)
    lost, duplicated = outcome(ledger, acknowledged)
    print(
        f"sent {len(acknowledged)}, refused {len(refused)} ({sorted({kind for _, kind in refused})}), lost {lost}, "
        f"duplicated {duplicated}, longest pause {longest_pause(ledger):.1f} s"
    )
    return acknowledged, lost


@pytest.mark.timeout(240)
def test_a_master_killed_and_restarted_with_its_aof_loses_nothing_acknowledged(
    cluster: LocalCluster, cluster_url: str, tmp_path: Path
) -> None:
    # Given a producer sending steadily to `hot` and a worker whose actor writes to the cluster
    ledger = Ledger(tmp_path / "ledger")
    broker = producer(cluster_url)

    def kill_and_restart() -> None:
        # When the master of the first shard is killed (SIGKILL) and started again on its AOF
        cluster.restart(cluster.node_for_key(broker.shards("hot")[0].tag), kill=True)

    env = cluster_env(cluster_url, ledger.path)
    acknowledged, lost = through_a_fault(env, broker, ledger, kill_and_restart)
    # Then every acknowledged message ran (the sends the outage refused were sent again)
    assert len(acknowledged) == 600
    assert lost == 0


@pytest.mark.timeout(240)
def test_a_cluster_failover_with_min_replicas_loses_nothing_acknowledged(tmp_path: Path) -> None:
    # Given a 3+3 cluster, producers and workers asking one replica to confirm every enqueue
    with redis_cluster(replicas=1, fsync="always") as cluster:
        ledger = Ledger(tmp_path / "ledger")
        env = cluster_env(cluster.url, ledger.path, TRIAGE_MIN_REPLICAS="1")
        broker = producer(cluster.url, min_replicas=1, replica_timeout_ms=1000)

        def failover() -> None:
            # When the replica of the first shard's master takes over (CLUSTER FAILOVER)
            master = cluster.node_for_key(broker.shards("hot")[0].tag)
            replica = next(n for n in cluster.replicas() if _master_port(n.port) == master.port)
            cluster.failover(replica)
            assert cluster.node_for_key(broker.shards("hot")[0].tag).port == replica.port

        acknowledged, lost = through_a_fault(env, broker, ledger, failover)
        # Then producers and workers followed the new master, and every acknowledged message ran
        assert len(acknowledged) == 600
        assert lost == 0


def _master_port(replica_port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=replica_port, decode_responses=True) as direct:
        return int(direct.info("replication")["master_port"])


def _tenant_on_shard(shard: int, count: int = 3) -> str:
    """A tenant whose messages all go to `shard` of a queue of `count` shards (sharding.py)."""
    return next(t for t in (f"tenant-{i}" for i in range(1000)) if zlib.crc32(t.encode()) % count == shard)


def _in_flight(cluster: LocalCluster) -> dict[str, int]:
    """Every in-flight record (`{ns:Q}:acks:<worker id>`) that holds entries, on every master."""
    found: dict[str, int] = {}
    for node in cluster.masters():
        with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as direct:
            for key in direct.scan_iter(match="*:acks:*"):
                if held := int(direct.hlen(key)):
                    found[key] = held
    return found


@pytest.mark.timeout(150)
@pytest.mark.parametrize("min_replicas", [1, 0])
def test_a_master_killed_whose_replica_promotes_itself_strands_nothing(min_replicas: int, tmp_path: Path) -> None:
    # Given a 3+3 cluster whose nodes deem a silent node failed after 1 s, a worker process (4 threads)
    # whose actor writes twice to the master about to be killed, and a producer streaming 600 sends
    # to the queue shard on that master (with `min_replicas`, each enqueue waits for its replica)
    with redis_cluster(replicas=1, fsync="always", node_timeout_ms=1000) as cluster:
        ledger = Ledger(tmp_path / "ledger")
        extra = {"TRIAGE_MIN_REPLICAS": str(min_replicas)} if min_replicas else {}
        env = cluster_env(cluster.url, ledger.path, **extra)
        broker = producer(cluster.url, min_replicas=min_replicas, replica_timeout_ms=1000)
        shard = broker.shards("hot")[0]
        master = cluster.node_for_key(shard.tag)
        written = f"{shard.tag}:written"  # the actor's list, on the same master
        assert cluster.node_for_key(written).port == master.port
        tenant = _tenant_on_shard(0)
        times: dict[str, float] = {}

        def crash_and_rejoin() -> None:
            # When that master is killed (SIGKILL) and its replica promotes itself (no CLUSTER
            # FAILOVER), then the killed node is started again and rejoins as a replica
            times["killed"] = time.time()
            promoted = cluster.crash(master)
            times["promoted"] = time.time() - times["killed"]
            assert cluster.node_for_key(shard.tag).port == promoted.port
            cluster.rejoin(master)
            times["rejoined"] = time.time() - times["killed"]

        def push(token: str) -> object:
            return broker.enqueue(Message("hot", "push", (token, written), {}, {"tenant": tenant}))

        with workers(env) as (worker,):
            pids = {worker.process.pid, *children(worker.process.pid)}
            acknowledged, refused = stream_through(crash_and_rejoin, push, ledger, finish_s=30)
            killed_at, promoted_after, rejoined_after = times["killed"], times["promoted"], times["rejoined"]
            lost, duplicated = outcome(ledger, set(acknowledged))
            after_kill = [at - killed_at for at, event, _, _ in ledger.events() if event == "finish" and at > killed_at]
            resumed_after = max(itertools.pairwise([0.0, *after_kill]), key=lambda gap: gap[1] - gap[0])[1]
            pushed = _list(cluster, written)
            runs = ledger.finished()
            spans = {k: [when - killed_at for when, kind in refused if kind == k] for _, k in refused}
            (tmp_path / "worker.log").write_text("".join(worker.log))
            print(
                f"\nmin replicas {min_replicas}: sent {len(acknowledged)}, lost {lost}, run twice {duplicated} "
                f"({sum(runs[t] - 1 for t in acknowledged if runs[t] > 1)} extra runs), refused {len(refused)} ("
                + ", ".join(f"{k} {len(t)} from {min(t):.1f} to {max(t):.1f} s" for k, t in sorted(spans.items()))
                + f"), promoted at {promoted_after:.1f} s, rejoined at {rejoined_after:.1f} s, work resumed at "
                f"{resumed_after:.1f} s, longest pause {longest_pause(ledger):.1f} s, actor writes missing "
                f"{len([t for t in acknowledged if t not in pushed])}, gave back "
                f"{sum('Gave back' in line for line in worker.log)}, tracebacks "
                f"{sum('Traceback' in line for line in worker.log)} (log: {tmp_path})"
            )
            # Then every acknowledged send ran (with min replicas; without, a send the replica had not
            # yet received when its master died is lost: counted above, not asserted)
            assert len(acknowledged) == 600
            if min_replicas:
                assert lost == 0
            # And the same worker process ran them all: no restart, no crash
            assert worker.process.poll() is None
            assert {pid for _, _, _, pid in ledger.events()} <= pids
            assert {worker.process.pid, *children(worker.process.pid)} == pids
            # And nothing stays in flight for the live worker: its in-flight records are empty
            wait_for(lambda: not _in_flight(cluster), timeout=15)
            wait_for(lambda: broker.counts("hot") == (0, 0, 0), timeout=15)


def _list(cluster: LocalCluster, key: str) -> set[str]:
    """The members of the list `key`, read from its master."""
    with redis.Redis(host="127.0.0.1", port=cluster.node_for_key(key).port, decode_responses=True) as direct:
        return {str(t) for t in direct.lrange(key, 0, -1)}
