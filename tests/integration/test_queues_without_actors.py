"""Queues on which no actor lives, consumed by real `dramatiq` worker processes.

The app of these workers (`tests.queue_actors`) declares no background actor and no actor on
`email` or `reports`: messages moved, retried or sent there must still run, by the actor
they name, in a worker whose `--queues` lists the queue.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from actors import runtime
from tests import queue_actors as qa
from tests.helpers import dramatiq_worker, triage, wait_for
from triage import default
from triage.middleware import RoutingError

broker = runtime.broker


def _done(r: redis.Redis) -> list[str]:
    return sorted(x.decode() if isinstance(x, bytes) else x for x in r.lrange(qa.DONE, 0, -1))


def _stats() -> dict[str, Any]:
    return dict(runtime.queue_stats())


def test_payments_demoted_by_an_open_breaker_run_on_background_with_no_actor_there(r: redis.Redis) -> None:
    # Given a worker started with `--queues critical background` for an app whose only
    # breaker-guarded actor is critical, with on_open="background", and no background actor
    spec = runtime.breakers["telegram"].spec
    with dramatiq_worker("tests.queue_actors", queues=["critical", "background"], threads=4):
        # When the breaker is open for 3 s and 5 payments are sent
        runtime.breakers.store.force_open(spec, for_ms=3_000)
        for i in range(5):
            qa.q_payment.send(f"p-{i}")
        # Then they are moved to the background queue
        wait_for(lambda: _stats()["critical"]["moved_total"] == 5, timeout=20)
        # And once the breaker lets them, all 5 run there, by the critical actor
        wait_for(lambda: len(_done(r)) == 5, timeout=30)
    assert _done(r) == [f"p-{i}@background" for i in range(5)]
    assert broker.counts("background") == (0, 0, 0)
    assert _stats()["background"]["dead_letters_total"] == 0


def test_retries_sent_to_a_configured_queue_with_no_actor_run_there(r: redis.Redis) -> None:
    # Given an actor of the default tier whose retries go to `email` (config.QUEUES), on
    # which no actor lives, and a worker started with `--queues default email`
    with dramatiq_worker("tests.queue_actors", queues=["default", "email"]):
        # When its messages fail their first attempt
        for i in range(3):
            qa.q_flaky.send(f"f-{i}")
        # Then each retry runs, from `email`
        wait_for(lambda: len(_done(r)) == 3, timeout=20)
    assert _done(r) == [f"f-{i}@email" for i in range(3)]
    assert _stats()["default"]["retries_total"] == 3
    assert broker.counts("email") == (0, 0, 0)


def test_send_with_options_queue_name_puts_the_message_on_that_queue_with_its_tiers_policies(
    r: redis.Redis,
) -> None:
    # Given an actor of the default tier, and `reports`, a queue of the background tier
    # When a message is sent to `reports` with send_with_options(queue_name=...)
    sent = qa.q_note.send_with_options(args=("c-1",), queue_name="reports")
    # Then it sits on `reports` in Redis, not on the actor's queue
    assert sent.queue_name == "reports"
    assert "queue_name" not in sent.options
    assert broker.counts("reports") == (1, 0, 0)
    assert broker.counts("default") == (0, 0, 0)
    # And it carries the background tier's priority, retry policy and time limit
    background = runtime.taxonomy.tiers["background"]
    assert sent.options["priority"] == background.priority
    assert sent.options["min_backoff"] == background.min_backoff_ms
    assert sent.options["time_limit"] == background.time_limit_ms
    # And operator commands list the queue, with its tier, from Redis alone
    listed = triage("stats", "--json")
    assert listed.returncode == 0, listed.stderr
    reports = json.loads(listed.stdout)["queues"]["reports"]
    assert (reports["tier"], reports["queued"]) == ("background", 1)
    # When the background tier's worker runs (`--queues $(triage queues background)`)
    queues = triage("queues", "background").stdout.split()
    assert "reports" in queues
    with dramatiq_worker("tests.queue_actors", queues=queues):
        wait_for(lambda: len(_done(r)) == 1, timeout=20)
    # Then the actor ran it, from `reports`
    assert _done(r) == ["c-1@reports"]
    assert broker.counts("reports") == (0, 0, 0)


def test_a_message_sent_to_another_tiers_queue_keeps_what_its_actor_and_itself_set(r: redis.Redis) -> None:
    # Given an actor of the default tier with backoffs and a retry queue of its own
    critical = runtime.taxonomy.tiers["critical"]
    # When its message is sent to the critical queue, once with a priority of its own
    plain = qa.q_flaky.send_with_options(args=("k-1",), queue_name="critical")
    urgent = qa.q_flaky.send_with_options(args=("k-2",), queue_name="critical", priority=3, time_limit=5_000)
    # Then it takes the critical tier's priority, retries and time limit in place of the default tier's
    assert plain.queue_name == "critical"
    assert (plain.options["priority"], plain.options["time_limit"]) == (critical.priority, critical.time_limit_ms)
    # And what the actor set itself stays the actor's (its retries, backoffs and retry queue: not in the message)
    assert not {"max_retries", "min_backoff", "max_backoff", "retry_queue", "retry_queue_after"} & set(plain.options)
    # And what the message set itself is kept
    assert (urgent.options["priority"], urgent.options["time_limit"]) == (3, 5_000)
    assert broker.counts("critical") == (2, 0, 0)
    # When a message is sent to its actor's own queue by name, nothing else changes
    same = qa.q_note.send_with_options(args=("k-3",), queue_name="default")
    assert same.queue_name == "default"
    assert set(same.options) == set(qa.q_note.send("k-4").options)


def test_a_queue_that_no_tier_declares_is_refused_naming_it_and_the_worker_it_needs(r: redis.Redis) -> None:
    # When a message is sent to a queue no tier declares
    with pytest.raises(RoutingError) as sent:
        qa.q_note.send_with_options(args=("x",), queue_name="nowhere")
    # Then nothing is enqueued, and the error names the option, the queue and the worker it needs
    assert "queue_name 'nowhere' is neither a tier nor a declared queue" in str(sent.value)
    assert "--queues nowhere" in str(sent.value)
    assert broker.counts("nowhere") == (0, 0, 0)
    assert broker.counts("default") == (0, 0, 0)
    # And a message-level retry_queue no tier declares is refused the same way
    with pytest.raises(RoutingError, match=r"retry_queue 'elsewhere' .*--queues elsewhere"):
        qa.q_note.send_with_options(args=("x",), retry_queue="elsewhere")
    # When an actor is declared with such a retry_queue
    with pytest.raises(RoutingError) as declared:

        @default(retry_queue="nowhere")
        def q_bad_retry_queue() -> None: ...

    # Then the declaration fails, naming the queue, where to declare it and the worker it needs
    message = str(declared.value)
    assert "retry_queue 'nowhere' is neither a tier nor a declared queue" in message
    assert "config.QUEUES" in message
    assert "--queues nowhere" in message


def test_a_worker_asked_for_a_queue_that_no_tier_declares_says_so_at_boot(r: redis.Redis) -> None:
    # When a worker is started with `--queues default nowhere`
    with dramatiq_worker("tests.queue_actors", queues=["default", "nowhere"]) as worker:
        pass
    # Then it warns, at boot, that it does not consume `nowhere`, and says where to declare it
    warned = [line for line in worker.log if "--queues names 'nowhere', which no tier declares" in line]
    assert len(warned) == 1
    assert "config.QUEUES or TRIAGE_QUEUES" in warned[0]
    assert not any("--queues names 'default'" in line for line in worker.log)
