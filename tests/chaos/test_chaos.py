"""Faults, with real processes and real signals, checked by a ledger kept outside Redis.

For each fault: lost = acknowledged enqueues that never finished; duplicated = messages
that finished more than once; recovery = from the fault until the messages that were in
flight at that moment have finished (or the figure named in the test)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from dramatiq.errors import BrokerError
from dramatiq.message import Message

from tests.helpers import wait_for
from triage.admin.redis_server import RedisServer, find_redis_server, free_port
from triage.broker.inspection import queue_stats
from triage.broker.redis_broker import TriageBroker
from triage.runtime import Runtime, build
from triage.settings import Settings

from .harness import Ledger, Supervisor, kill_orphans, record_result


@dataclass
class Chaos:
    server: RedisServer
    runtime: Runtime
    ledger: Ledger
    tmp: Path

    @property
    def broker(self) -> TriageBroker:
        return self.runtime.broker

    def send(self, actor_name: str, *args: Any, **options: Any) -> Message[Any]:
        message: Message[Any] = Message(
            queue_name="chaos", actor_name=actor_name, args=args, kwargs={}, options=options
        )
        return self.broker.enqueue(message)

    def send_work(self, count: int, ms: int, prefix: str = "w") -> set[str]:
        tokens = {f"{prefix}{i}" for i in range(count)}
        for token in sorted(tokens, key=lambda t: int(t[len(prefix) :])):
            self.send("work", token, ms)
        return tokens

    def supervisor(self, **kwargs: Any) -> Supervisor:
        return Supervisor(redis_url=self.server.url, ledger=self.ledger.path, **kwargs).start()


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    server = RedisServer(port=free_port(), data_dir=tmp_path / "redis", appendonly=True, fsync="always").start()
    runtime = build(Settings(redis_url=server.url))
    yield Chaos(server, runtime, Ledger(tmp_path / "ledger.txt"), tmp_path)
    runtime.broker.close()
    server.stop()


def outcome(ledger: Ledger, acknowledged: set[str]) -> tuple[int, int]:
    finished = ledger.finished()
    lost = len([t for t in acknowledged if finished[t] == 0])
    duplicated = len([t for t, n in finished.items() if n > 1])
    return lost, duplicated


@pytest.mark.fast
def test_kill_9_of_a_worker_process_mid_task(chaos: Chaos) -> None:
    # Given 120 messages of 100 ms and a supervised worker (4 threads, heartbeat timeout 2 s)
    sent = chaos.send_work(120, 100)
    supervisor = chaos.supervisor()
    try:
        wait_for(lambda: sum(chaos.ledger.finished().values()) >= 20, timeout=60)
        # When its worker process is killed with SIGKILL mid-task
        [child] = supervisor.children()
        killed_at = time.time()
        os.kill(child, signal.SIGKILL)
        in_flight = chaos.ledger.running_at(killed_at)
        # Then every message finishes, the interrupted ones after the reaper took them back
        wait_for(lambda: all(chaos.ledger.finished()[t] for t in sent), timeout=90)
    finally:
        supervisor.stop()
    lost, duplicated = outcome(chaos.ledger, sent)
    recovery = chaos.ledger.last_finish(in_flight) - killed_at if in_flight else 0.0
    record_result("kill -9 of a worker process", lost, duplicated, f"{recovery:.1f} s", "heartbeat timeout 2 s")
    assert lost == 0
    assert in_flight
    assert recovery < 2 + 1 + 0.5 + 5  # timeout + reaper period + heartbeat period + restart and rerun


def test_kill_9_of_the_dramatiq_parent_mid_task(chaos: Chaos) -> None:
    sent = chaos.send_work(120, 100)
    supervisor = chaos.supervisor()
    orphans: list[int] = []
    try:
        wait_for(lambda: sum(chaos.ledger.finished().values()) >= 20, timeout=60)
        assert supervisor.current is not None
        orphans = supervisor.children()
        killed_at = time.time()
        supervisor.current.send_signal(signal.SIGKILL)
        in_flight = chaos.ledger.running_at(killed_at)
        wait_for(lambda: all(chaos.ledger.finished()[t] for t in sent), timeout=90)
    finally:
        supervisor.stop()
        kill_orphans(orphans)
    lost, duplicated = outcome(chaos.ledger, sent)
    recovery = chaos.ledger.last_finish(in_flight) - killed_at if in_flight else 0.0
    record_result("kill -9 of the dramatiq parent", lost, duplicated, f"{recovery:.1f} s", "orphaned workers finish")
    assert lost == 0


def test_sigterm_mid_batch_loses_nothing_and_runs_nothing_twice(chaos: Chaos) -> None:
    sent = chaos.send_work(60, 200)
    supervisor = chaos.supervisor()
    try:
        wait_for(lambda: sum(chaos.ledger.finished().values()) >= 10, timeout=60)
        assert supervisor.current is not None
        stopped_at = time.time()
        supervisor.current.send_signal(signal.SIGTERM)
        wait_for(lambda: supervisor.restarts >= 1, timeout=30)
        back_at = time.time()
        wait_for(lambda: all(chaos.ledger.finished()[t] for t in sent), timeout=90)
    finally:
        supervisor.stop()
    lost, duplicated = outcome(chaos.ledger, sent)
    starts = chaos.ledger.started()
    record_result("SIGTERM mid-batch", lost, duplicated, f"{back_at - stopped_at:.1f} s to exit", "grace 20 s")
    assert lost == 0
    assert duplicated == 0
    assert all(n == 1 for n in starts.values())  # nothing interrupted, nothing started twice


def test_a_poison_message_is_quarantined_and_the_others_flow(chaos: Chaos) -> None:
    # Given a message that kills its worker, behind a few healthy ones and before many more
    early = chaos.send_work(5, 50, prefix="e")
    chaos.send("poison", "p")
    sent = early | chaos.send_work(40, 50)
    supervisor = chaos.supervisor()
    keys = chaos.broker.keys("chaos")
    try:
        # Then after max_deliveries (3) crashes it is dead-lettered as a crash-loop
        wait_for(lambda: chaos.broker.client.zcard(keys.dead) == 1, timeout=120)
        wait_for(lambda: all(chaos.ledger.finished()[t] for t in sent), timeout=60)
    finally:
        supervisor.stop()
    lost, duplicated = outcome(chaos.ledger, sent)
    [info] = [json.loads(v) for v in chaos.broker.client.hvals(keys.dead_info)]
    record_result("poison message (os._exit)", lost, duplicated, f"{supervisor.restarts} restarts", "max_deliveries 3")
    assert info["reason"] == "crash-loop"
    assert chaos.ledger.started()["p"] == 3
    assert lost == 0


@pytest.mark.fast
def test_garbage_in_a_queue_is_dead_lettered_and_the_worker_stays_up(chaos: Chaos) -> None:
    keys = chaos.broker.keys("chaos")
    # two messages of the enqueue script's ENQUEUE_FIELDS each (no dedup key)
    garbage = [
        *("junk-1", b"\x00\x01 not a message", 5, "", 0, 0, "junk-1", "", "", 0, 0),
        *("junk-2", msgpack.packb({"no": "fields"}), 5, "", 0, 0, "junk-2", "", "", 0, 0),
    ]
    chaos.broker.scripts["enqueue"](
        keys=keys.enqueue_keys(), args=[0, msgpack.packb([garbage], use_bin_type=False), msgpack.packb([[0, 0]])]
    )
    sent = chaos.send_work(20, 20)
    supervisor = chaos.supervisor()
    try:
        wait_for(lambda: all(chaos.ledger.finished()[t] for t in sent), timeout=60)
        wait_for(lambda: chaos.broker.client.zcard(keys.dead) == 2)
    finally:
        supervisor.stop()
    lost, duplicated = outcome(chaos.ledger, sent)
    record_result("undecodable bytes in the queue", lost, duplicated, f"{supervisor.restarts} restarts", "")
    assert lost == 0
    assert supervisor.restarts == 0
    assert chaos.broker.counts("chaos") == (0, 0, 0)


def redis_kill_9_mid_stream(chaos: Chaos, actor: str, *, threads: int = 4, ms: int = 10) -> dict[str, Any]:
    """A producer sends to `actor` steadily while a worker consumes; Redis is killed with SIGKILL
    and restarted a second later (AOF always). Returns what the ledger and the supervisor saw."""
    acknowledged: set[str] = set()
    refused = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal refused
        i = 0
        while not stop.is_set() and i < 400:
            token = f"r{i}"
            try:
                chaos.send(actor, token, ms)
                acknowledged.add(token)
                i += 1
            except BrokerError:
                refused += 1
                time.sleep(0.05)
            time.sleep(0.01)

    supervisor = chaos.supervisor(threads=threads)
    producer = threading.Thread(target=produce)
    producer.start()
    resumed = back_at = killed_at = 0.0
    try:
        wait_for(lambda: len(acknowledged) >= 100, timeout=30)
        # When Redis is killed with SIGKILL and comes back a second later
        assert chaos.server.process is not None
        chaos.server.process.kill()
        chaos.server.process.wait()
        killed_at = time.time()
        time.sleep(1)
        chaos.server.start()
        back_at = time.time()
        producer.join(120)
        # Then every acknowledged enqueue finishes (or the wait ends and the loss is counted)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(chaos.ledger.finished()[t] for t in acknowledged), timeout=60)
        finishes = [at for at, e, _, _ in chaos.ledger.events() if e == "finish" and at > back_at]
        resumed = min(finishes) if finishes else float("nan")
    finally:
        stop.set()
        supervisor.stop()
    lost, duplicated = outcome(chaos.ledger, acknowledged)
    return {
        "lost": lost,
        "duplicated": duplicated,
        "resumed": resumed - back_at,
        "refused": refused,
        "restarts": supervisor.restarts,
        "down": back_at - killed_at,
        "back_at": back_at,
        "sent": len(acknowledged),
    }


def test_redis_kill_9_and_restart_with_aof_always(chaos: Chaos) -> None:
    # Given a producer sending steadily and a worker consuming actors that do not use Redis
    seen = redis_kill_9_mid_stream(chaos, "work")
    record_result(
        "Redis kill -9 + restart (AOF always)",
        seen["lost"],
        seen["duplicated"],
        f"{seen['resumed']:.1f} s after Redis is back",
        f"{seen['refused']} sends refused while down; {seen['restarts']} worker restarts; down {seen['down']:.1f} s",
    )
    # Then nothing acknowledged is lost, and the worker never restarted
    assert seen["lost"] == 0
    assert seen["restarts"] == 0


def test_redis_kill_9_while_actors_use_redis(chaos: Chaos) -> None:
    # Given actors of 100 ms that write their result to the same Redis (their calls fail while it
    # is down, and are retried), 8 threads, and a producer sending a little faster than they run
    seen = redis_kill_9_mid_stream(chaos, "write", threads=8, ms=100)
    written = {t.decode() if isinstance(t, bytes) else t for t in chaos.broker.client.lrange("chaos:written", 0, -1)}
    retries = queue_stats(chaos.broker.client, chaos.broker.shards, ["chaos"])["chaos"]["retries_total"]
    record_result(
        "Redis kill -9 + restart (AOF always), actors writing to Redis",
        seen["lost"],
        seen["duplicated"],
        f"{seen['resumed']:.1f} s after Redis is back",
        f"{seen['sent']} sent, {seen['refused']} refused while down; {seen['restarts']} worker restarts; "
        f"{retries} retries",
    )
    # Then no acknowledged message is lost: each failed delivery was retried, and its retry
    # and the ack of the failure were one step, applied once Redis answered again
    assert seen["lost"] == 0, f"{seen['lost']} acknowledged messages never ran"
    assert seen["restarts"] == 0
    # And the outage did make actors fail (the test exercised the retry path)
    assert retries > 0
    assert len(written) == seen["sent"]


@pytest.mark.parametrize("run", range(10))
def test_redis_kill_9_with_two_write_actors_strands_nothing(chaos: Chaos, run: int) -> None:
    # Given actors that write to the same Redis twice around a 4 ms wait, one worker process of
    # 8 threads, and a producer streaming sends (a fetch's reply may be lost when Redis dies)
    seen = redis_kill_9_mid_stream(chaos, "write_twice", threads=8, ms=4)
    finishes = [at for at, e, _, _ in chaos.ledger.events() if e == "finish"]
    last = max(finishes) - seen["back_at"] if finishes else float("nan")
    record_result(
        f"Redis kill -9 + restart (AOF always), two-write actors, run {run + 1} of 10",
        seen["lost"],
        seen["duplicated"],
        f"all run {last:.1f} s after Redis is back",
        f"{seen['sent']} sent, {seen['refused']} refused while down; {seen['restarts']} worker restarts",
    )
    # Then no acknowledged send is lost, every one ran within 30 s of Redis answering again, and
    # by the same worker process (none stayed in flight for it)
    assert seen["lost"] == 0, f"{seen['lost']} acknowledged messages never ran"
    assert seen["restarts"] == 0
    assert last <= 30
    stats = queue_stats(chaos.broker.client, chaos.broker.shards, ["chaos"])["chaos"]
    assert (stats["queued"], stats["running"]) == (0, 0)


def start_sentinels(tmp: Path, primary_port: int, count: int = 3) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    processes, ports = [], []
    for n in range(count):
        port = free_port()
        conf = tmp / f"sentinel-{n}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor triage 127.0.0.1 {primary_port} 2\n"
            "sentinel down-after-milliseconds triage 1000\n"
            "sentinel failover-timeout triage 5000\n"
            "sentinel parallel-syncs triage 1\n"
        )
        processes.append(
            subprocess.Popen(
                [find_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        ports.append(port)
    return processes, ports


def test_sentinel_failover_with_min_replicas_loses_no_acknowledged_enqueue(tmp_path: Path) -> None:
    primary = RedisServer(port=free_port(), data_dir=tmp_path / "primary", fsync="always").start()
    replica = RedisServer(
        port=free_port(),
        data_dir=tmp_path / "replica",
        fsync="always",
        extra_args=("--replicaof", "127.0.0.1", str(primary.port)),
    ).start()
    sentinels, ports = start_sentinels(tmp_path, primary.port)
    try:
        wait_for(lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up")
        url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/triage/0"
        wait_for(lambda: _sentinels_ready(ports), timeout=30)
        runtime = build(Settings(redis_url=url, min_replicas=1, replica_timeout_ms=500))
        broker = runtime.broker
        acknowledged: list[str] = []
        refused = 0
        failover_at = first_after = 0.0
        for i in range(600):
            if i == 150:
                redis.Redis(port=ports[0]).execute_command("SENTINEL", "FAILOVER", "triage")
                failover_at = time.time()
            message: Message[Any] = Message(
                queue_name="chaos", actor_name="work", args=(f"s{i}", 1), kwargs={}, options={}
            )
            try:
                sent = broker.enqueue(message)
                acknowledged.append(sent.options["redis_message_id"])
                if failover_at and not first_after and refused:
                    first_after = time.time()
            except BrokerError:
                refused += 1
                time.sleep(0.05)
            time.sleep(0.005)
        new_primary = broker.client
        present = new_primary.hmget(broker.keys("chaos").msgs, acknowledged)
        lost = sum(1 for p in present if p is None)
        promoted = redis.Redis(port=replica.port).info("replication")["role"] == "master"
        runtime.broker.close()
    finally:
        for process in sentinels:
            process.kill()
            process.wait()
        replica.stop()
        primary.stop()
    outage = f"{first_after - failover_at:.1f} s of refused enqueues" if first_after else "no refused enqueue"
    record_result("Sentinel failover, TRIAGE_MIN_REPLICAS=1", lost, 0, outage, f"{refused} sends refused, retried")
    assert promoted
    assert lost == 0


def _sentinels_ready(ports: list[int]) -> bool:
    """Every sentinel sees a quorum, and the first one knows the replica (it can fail over)."""
    try:
        for port in ports:
            redis.Redis(port=port).execute_command("SENTINEL", "CKQUORUM", "triage")
        return bool(redis.Redis(port=ports[0]).execute_command("SENTINEL", "REPLICAS", "triage"))
    except redis.RedisError:
        return False
