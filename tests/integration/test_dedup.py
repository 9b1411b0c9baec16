"""Deduplication on a real Redis: one message per key, taken with the enqueue, released by the
broker on ack, dead letter and purge; modes; retries and redeliveries are not duplicates."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triage
from actors import background, default, runtime
from tests.dedup_actors import QUEUE, slow_once_job
from tests.helpers import ROOT, dramatiq_worker, env_with, wait_for
from tests.helpers import triage as triage_cli
from triage.broker.dedup import MAX_KEY_BYTES, holder
from triage.middleware import Deduplication, InvalidActorOption
from triage.runtime import build
from triage.settings import load_settings

broker = runtime.broker


@default(queue=QUEUE, dedup="report:{org_id}:{report_id}", dedup_ttl=60)
def t_report(org_id: str, report_id: int, fmt: str = "pdf") -> None: ...


@default(queue=QUEUE, dedup="start:{n}", dedup_ttl=60, dedup_mode="until_start")
def t_start(n: int) -> None: ...


@default(queue=QUEUE, dedup="win:{n}", dedup_ttl=0.4, dedup_mode="window")
def t_window(n: int) -> None: ...


@default(queue=QUEUE, dedup=lambda order: f"order:{order['id']}", dedup_ttl=60, on_duplicate="raise")
def t_strict(order: dict[str, Any]) -> None: ...


@default(queue=QUEUE)
def t_plain(n: int) -> None: ...


def stats() -> Any:
    return runtime.queue_stats()[QUEUE]


def take(count: int = 1) -> list[MessageProxy]:
    """`count` messages fetched by a real consumer (the worker's side of the broker)."""
    consumer = broker.consume(QUEUE, prefetch=count, timeout=50)
    taken = [next(consumer) for _ in range(count)]
    assert all(isinstance(m, MessageProxy) for m in taken)
    return [m for m in taken if m is not None]


def test_a_second_send_with_the_same_key_is_not_stored_and_returns_the_first(r: redis.Redis) -> None:
    # Given a report sent with positional arguments
    first = t_report.send("acme", 7)
    # When the same report is sent with keywords (and the default spelled out), and another report
    second = t_report.send_with_options(kwargs={"org_id": "acme", "report_id": 7, "fmt": "pdf"})
    other = t_report.send("acme", 8)
    # Then the duplicate was not stored and carries the first's id; the other report was stored
    assert second.message_id == first.message_id
    assert second.options["duplicate_of"] == first.message_id
    assert other.message_id != first.message_id
    assert (stats()["queued"], stats()["duplicates_total"]) == (2, 1)
    held = holder(r, broker.keys(QUEUE), "report:acme:7")
    assert held is not None
    assert (held["message_id"], held["mode"]) == (first.message_id, "until_done")


def test_until_done_holds_through_a_retry_and_is_released_by_the_ack(r: redis.Redis) -> None:
    # Given a deduplicated message that fails and is retried (a new id in Redis, the same message)
    t_report.send("acme", 1)
    (message,) = take()
    broker.retry_later(message, message._message.copy(), delay_ms=0)
    broker.consume(QUEUE, prefetch=1, timeout=50).ack(message)
    # Then a duplicate sent while it waits for its retry is refused
    assert t_report.send("acme", 1).options.get("duplicate_of")
    # When the retry runs and is acked
    (retried,) = take()
    broker.consume(QUEUE, prefetch=1, timeout=50).ack(retried)
    # Then the key is free: the next send is stored
    assert "duplicate_of" not in t_report.send("acme", 1).options


def test_a_dead_letter_releases_its_key(r: redis.Redis) -> None:
    # Given a deduplicated message that is dead-lettered
    t_report.send("acme", 2)
    (message,) = take()
    broker.dead_letter_as(message, "exhausted")
    broker.consume(QUEUE, prefetch=1, timeout=50).nack(message)
    # Then the same key can be sent again
    assert "duplicate_of" not in t_report.send("acme", 2).options


def test_a_purged_queue_releases_its_keys(r: redis.Redis) -> None:
    # Given a queued deduplicated message, when an operator purges the queue
    t_report.send("acme", 3)
    broker.flush(QUEUE)
    # Then the key is free
    assert "duplicate_of" not in t_report.send("acme", 3).options


def test_until_start_releases_when_the_message_starts_running(r: redis.Redis) -> None:
    # Given an until_start message, queued
    first = t_start.send(1)
    assert t_start.send(1).message_id == first.message_id
    # When a worker starts running it (the middleware's before_process_message)
    (message,) = take()
    next(m for m in broker.middleware if isinstance(m, Deduplication)).before_process_message(broker, message)
    # Then one more may be queued while it runs
    assert "duplicate_of" not in t_start.send(1).options


def test_a_window_key_is_held_for_its_ttl_whatever_happens(r: redis.Redis) -> None:
    # Given a window key whose message was acked at once
    t_window.send(1)
    (message,) = take()
    broker.consume(QUEUE, prefetch=1, timeout=50).ack(message)
    # Then it is still held until its 0.4 s have passed, then free
    assert t_window.send(1).options.get("duplicate_of")
    time.sleep(0.45)
    assert "duplicate_of" not in t_window.send(1).options


def test_on_duplicate_raise_names_the_original(r: redis.Redis) -> None:
    # Given an actor keyed by a callable that raises on duplicates
    first = t_strict.send({"id": 9, "total": 10})
    # When the same order is sent again, then DuplicateMessage names the first
    with pytest.raises(triage.DuplicateMessage) as caught:
        t_strict.send({"id": 9, "total": 12})
    assert caught.value.original_id == first.message_id
    assert caught.value.key == "order:9"


def test_a_batch_keeps_the_first_message_of_each_key(r: redis.Redis) -> None:
    # Given a batch with two messages of one key, one of another, and one without a key
    sent = triage.enqueue_batch(
        [t_report.message("acme", 5), t_report.message("acme", 5), t_report.message("acme", 6), t_plain.message(1)]
    )
    # Then three are stored; the second carries the first's id
    assert sent[1].message_id == sent[0].message_id
    assert stats()["queued"] == 3
    assert stats()["duplicates_total"] == 1


def test_a_per_send_key_and_a_long_key(r: redis.Redis) -> None:
    # Given per-send keys on an actor without dedup, one of them longer than the bound
    long_key = "x" * (MAX_KEY_BYTES + 50)
    first = t_plain.send_with_options(args=(1,), dedup_key="welcome:42", dedup_ttl=60)
    again = t_plain.send_with_options(args=(2,), dedup_key="welcome:42", dedup_ttl=60)
    long_first = t_plain.send_with_options(args=(3,), dedup_key=long_key, dedup_ttl=60)
    long_again = t_plain.send_with_options(args=(4,), dedup_key=long_key, dedup_ttl=60)
    # Then each key holds once, the long one stored as its hash
    assert again.message_id == first.message_id
    assert long_again.message_id == long_first.message_id
    assert all(len(k) <= MAX_KEY_BYTES for k in r.hkeys(broker.keys(QUEUE).dedup))
    # And a per-send key without a ttl is refused at send, naming the actor
    with pytest.raises(ValueError, match=r"t_plain.*dedup_ttl"):
        t_plain.send_with_options(args=(5,), dedup_key="welcome:43")


def test_bad_declarations_are_errors_at_declaration() -> None:
    # A key without a ttl, and a template naming a parameter the actor does not have
    with pytest.raises(InvalidActorOption, match="needs dedup_ttl"):

        @background(dedup="x:{n}")
        def t_no_ttl(n: int) -> None: ...

    with pytest.raises(InvalidActorOption, match="names 'org'"):

        @background(dedup="x:{org}", dedup_ttl=5)
        def t_bad_field(n: int) -> None: ...


def ledger_keys(path: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in path.read_text().splitlines()) if path.exists() else Counter()


@pytest.mark.parametrize(("actor", "worker_during"), [("once_job", False), ("window_job", True)])
def test_4_producers_x_8_threads_sending_20_copies_of_1000_keys_run_each_key_once(
    r: redis.Redis, tmp_path: Path, actor: str, worker_during: bool
) -> None:
    # Given 4 producer processes with 8 threads each, sending 5 copies each of 1,000 keys
    # (20 per key in all), shuffled, single sends and batches mixed, all at once; the
    # until_done actor's worker starts after them, the window actor's runs while they send
    ledger = tmp_path / "ledger"
    with contextlib.ExitStack() as stack:
        if worker_during:
            stack.enter_context(
                dramatiq_worker("tests.dedup_actors", queues=[QUEUE], threads=8, TEST_LEDGER=str(ledger))
            )
        producers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.dedup_actors", actor, "1000", "5", "8", str(seed)],
                cwd=ROOT,
                env=env_with(TEST_LEDGER=str(ledger)),
            )
            for seed in range(1, 5)
        ]
        assert [p.wait(120) for p in producers] == [0, 0, 0, 0]
        # Then exactly 1,000 were stored and 19,000 refused
        assert (stats()["enqueued_total"], stats()["duplicates_total"]) == (1000, 19_000)
        # When a real worker runs them, then the ledger (outside Redis) has each key exactly once
        if not worker_during:
            stack.enter_context(
                dramatiq_worker("tests.dedup_actors", queues=[QUEUE], threads=8, TEST_LEDGER=str(ledger))
            )
        wait_for(lambda: stats()["acked_total"] >= 1000 and stats()["running"] == 0, 120)
    runs = ledger_keys(ledger)
    assert len(runs) == 1000
    assert set(runs.values()) == {1}


def test_a_worker_killed_mid_run_is_not_a_duplicate_of_itself(r: redis.Redis, tmp_path: Path) -> None:
    # Given a deduplicated job running on a worker that is killed with SIGKILL mid-run
    ledger = tmp_path / "ledger"
    first = slow_once_job.send("k", 2.0)
    env = {"TEST_LEDGER": str(ledger), "TRIAGE_HEARTBEAT_TIMEOUT": "1"}
    with dramatiq_worker("tests.dedup_actors", queues=[QUEUE], new_session=True, **env) as victim:  # type: ignore[arg-type]
        wait_for(lambda: stats()["running"] == 1, 20)
        os.killpg(victim.process.pid, signal.SIGKILL)  # no chance to give anything back
        victim.process.wait(10)
    # Then a duplicate sent meanwhile is still refused (the key stayed with the message)
    assert slow_once_job.send("k", 2.0).message_id == first.message_id
    # When another worker's reaper takes the message back, then it runs once more, and only once
    with dramatiq_worker("tests.dedup_actors", queues=[QUEUE], **env):  # type: ignore[arg-type]
        wait_for(lambda: ledger_keys(ledger)["k"] == 1 and stats()["running"] == 0, 30)
    assert ledger_keys(ledger)["k"] == 1


def test_a_message_without_dedup_pays_nothing_new(r: redis.Redis) -> None:
    # Given plain sends, then no dedup key is written
    for n in range(5):
        t_plain.send(n)
    assert r.hlen(broker.keys(QUEUE).dedup) == 0


# -- a model: hypothesis over mixes of modes, delays, batches, starts, acks and dead letters ----

MODE_ACTORS = {
    "until_done": default(queue=QUEUE, actor_name="h_done", dedup="done:{k}", dedup_ttl=600)(lambda k: None),
    "until_start": default(
        queue=QUEUE, actor_name="h_start", dedup="start:{k}", dedup_ttl=600, dedup_mode="until_start"
    )(lambda k: None),
    "window": default(queue=QUEUE, actor_name="h_window", dedup="win:{k}", dedup_ttl=600, dedup_mode="window")(
        lambda k: None
    ),
}
PREFIX = {"until_done": "done", "until_start": "start", "window": "win"}
Send = tuple[str, int, bool]  # mode, key number, delayed by an hour
send_st = st.tuples(st.sampled_from(sorted(MODE_ACTORS)), st.integers(0, 3), st.booleans())
op_st: st.SearchStrategy[tuple[str, list[Send]]] = st.one_of(
    st.tuples(st.just("send"), st.lists(send_st, min_size=1, max_size=4)),
    st.tuples(st.just("take"), st.just([])),
    st.tuples(st.sampled_from(["start", "ack", "dead"]), st.just([])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_st, max_size=25))
def test_the_broker_agrees_with_a_model_of_the_modes(r: redis.Redis, ops: list[tuple[str, list[Send]]]) -> None:
    r.flushdb()
    consumer = broker.consume(QUEUE, prefetch=1, timeout=50)
    dedup = next(m for m in broker.middleware if isinstance(m, Deduplication))
    held: dict[str, str] = {}  # the model: key -> message_id of its holder
    ready: list[tuple[str, str, str]] = []  # (message_id, key, mode), in queue order
    running: list[tuple[MessageProxy, str, str]] = []
    for op, sends in ops:
        if op == "send":
            sent = triage.enqueue_batch([(MODE_ACTORS[m].message(k), 3_600_000 if d else None) for m, k, d in sends])
            for out, (mode, k, delayed) in zip(sent, sends, strict=True):
                key = f"{PREFIX[mode]}:{k}"
                if key in held:
                    assert out.message_id == held[key], f"{key} should be a duplicate of {held[key]}"
                else:
                    assert "duplicate_of" not in out.options, f"{key} is free"
                    held[key] = out.message_id
                    if not delayed:
                        ready.append((out.message_id, key, mode))
        elif op == "take" and ready:
            consumer._fetch(1)
            proxy = consumer.cache.popleft()
            message_id, key, mode = ready.pop(0)
            assert proxy.message_id == message_id
            running.append((proxy, key, mode))
        elif running:
            proxy, key, mode = running[0]
            if op == "start":
                dedup.before_process_message(broker, proxy)
                if mode == "until_start" and held.get(key) == proxy.message_id:
                    del held[key]
                continue
            running.pop(0)
            if op == "dead":
                broker.dead_letter_as(proxy, "exhausted")
                consumer.nack(proxy)
            else:
                consumer.ack(proxy)
            if mode != "window" and held.get(key) == proxy.message_id:
                del held[key]


def test_operators_see_who_holds_a_key_and_release_it(r: redis.Redis) -> None:
    # Given a key held by a queued report
    first = t_report.send("acme", 11)
    # When an operator asks who holds it
    shown = triage_cli("dedup", "show", "report:acme:11", "--json")
    # Then the holder, its mode and queue are shown
    assert shown.returncode == 0, shown.stderr
    (held,) = json.loads(shown.stdout)["holders"]
    assert (held["message_id"], held["queue"], held["mode"]) == (first.message_id, QUEUE, "until_done")
    assert 0 < held["expires_in_seconds"] <= 60
    # When the operator releases it, then the next send is stored, and the key is no longer held
    released = triage_cli("dedup", "release", "report:acme:11", "--queue", QUEUE)
    assert released.returncode == 0, released.stderr
    assert "duplicate_of" not in t_report.send("acme", 11).options
    assert triage_cli("dedup", "show", "nobody:holds:this").returncode == 3


def test_a_send_repeated_after_a_lost_reply_is_not_a_duplicate_of_itself(r: redis.Redis) -> None:
    # Given a message stored, whose producer did not get the reply (it sends the same message again)
    message = t_strict.message({"id": 77})
    broker.enqueue(message)
    # When it is sent again, then it is neither refused nor stored twice nor counted as a duplicate
    again = broker.enqueue(message)
    assert "duplicate_of" not in again.options
    assert (stats()["queued"], stats()["duplicates_total"]) == (1, 0)


def test_dedup_ttl_beyond_a_year_is_an_error_at_declaration() -> None:
    with pytest.raises(InvalidActorOption, match="one year"):

        @background(dedup="x:{n}", dedup_ttl=400 * 86_400)
        def t_too_long(n: int) -> None: ...


def test_shedding_counts_only_what_it_stored(r: redis.Redis) -> None:
    # Given a background actor with a dedup key, while the critical queue is late (load shedding on)
    shedding = build(load_settings(namespace="shed2", tiers={"critical": {"sla_seconds": 0.2}}))
    dedup_rt = shedding.broker
    dramatiq.actor(actor_name="t_crit", queue_name="critical", broker=dedup_rt)(lambda: None)
    keyed = dramatiq.actor(actor_name="t_bg", queue_name="background", broker=dedup_rt, dedup="bg:{n}", dedup_ttl=60)(
        lambda n: None
    )
    dedup_rt.enqueue(Message("critical", "t_crit", (), {}, {}))
    time.sleep(0.3)
    # When the same background message is sent twice
    keyed.send(1)
    keyed.send(1)
    # Then one was held back and stored, one refused: shed_total counts one
    row = shedding.queue_stats()["background"]
    assert (row["delayed"], row["duplicates_total"], row["shed_total"]) == (1, 1, 1)
    dedup_rt.close()
