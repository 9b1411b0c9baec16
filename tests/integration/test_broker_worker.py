"""The Triage broker under a real `dramatiq` worker: strict order, inheritance, and Dramatiq's
features that must keep working: retries, dead letters, pipelines, groups, results."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq import group, pipeline

from actors import runtime
from tests import worker_actors as wa
from tests.helpers import Worker, dramatiq_worker, wait_for
from tests.integration.test_broker import model_order

broker = runtime.broker


def done(r: redis.Redis) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in r.lrange(wa.DONE, 0, -1)]


def test_a_one_thread_worker_runs_a_queue_in_strict_priority_order(r: redis.Redis) -> None:
    # Given a paused queue filled with a random mix of priorities and tenants
    rng = random.Random(7)
    broker.pause("t_order")
    sent = []
    for token in range(40):
        level, tenant = rng.randint(1, 10), rng.choice(["", "acme", "globex"])
        options: dict[str, Any] = {"priority": level, **({"tenant": tenant} if tenant else {})}
        wa.record_order.send_with_options(args=(str(token),), **options)
        sent.append((token, level, tenant))
    # When a one-thread worker consumes it and the queue is resumed
    with dramatiq_worker("actors", "tests.worker_actors", queues=["t_order"], threads=1):
        broker.resume("t_order")
        wait_for(lambda: r.llen(wa.DONE) == 40)
    # Then the worker ran them in exactly the documented order
    assert [int(t) for t in done(r)] == model_order(sent)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with dramatiq_worker("actors", "tests.worker_actors", queues=["critical", "default", "background"]) as w:
        yield w


def test_children_inherit_priority_and_tenant_unless_given_their_own(r: redis.Redis, worker: Worker) -> None:
    wa.parent_sends_children.send_with_options(args=("p",), priority=8, tenant="acme")
    wait_for(lambda: r.llen(wa.DONE) == 2)
    placements = sorted(json.loads(x) for x in done(r))
    assert placements == [["p:inherited", 8, "acme"], ["p:own", 3, "own-tenant"]]


def test_retries_keep_working_and_exhausted_ones_are_dead_lettered(r: redis.Redis, worker: Worker) -> None:
    # Given one message that fails twice and one that always fails (max_retries=3)
    wa.flaky.send_with_options(args=("ok", 2), priority=7, tenant="acme")
    wa.flaky.send("doomed", 100)
    # Then the first succeeds on its third attempt and the second lands in the dead letters
    wait_for(lambda: "flaky:ok:3" in done(r))
    wait_for(lambda: r.zcard(broker.keys("default").dead) == 1)
    assert r.get("test:attempts:doomed") == b"4"
    wait_for(lambda: broker.counts("default") == (0, 0, 0))
    assert runtime.queue_stats()["default"]["dead_letters_total"] == 1


def test_pipelines_pass_results_along(r: redis.Redis, worker: Worker) -> None:
    # Each step gets the previous result as its last argument
    pipeline([wa.add.message(1, 2), wa.multiply.message(10), wa.record_value.message()]).run()  # type: ignore[call-arg]
    wait_for(lambda: done(r) == ["value:30"])


def test_results_are_stored_and_read_back(r: redis.Redis, worker: Worker) -> None:
    message = wa.multiply.send(6, 7)
    assert message.get_result(block=True, timeout=10_000) == 42


def test_group_completion_callback_runs_once_all_are_done(r: redis.Redis, worker: Worker) -> None:
    jobs = group([wa.add.message(1, 1), wa.add.message(2, 2), wa.add.message(3, 3)])
    jobs.add_completion_callback(wa.group_done.message())
    jobs.run()
    wait_for(lambda: done(r) == ["group-done"])
