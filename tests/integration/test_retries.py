"""The retry policy and deferral, in real worker processes and on the real broker scripts."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import redis
from dramatiq import Retry
from dramatiq.broker import MessageProxy

from actors import default, runtime
from tests import worker_actors as wa
from tests.helpers import dramatiq_worker, wait_for
from triage import Defer
from triage.broker.clock import now_ms
from triage.middleware import Callbacks, RoutingError
from triage.middleware.retries import RetryPolicy, backoff_ms

broker = runtime.broker


def _done(r: redis.Redis) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in r.lrange(wa.DONE, 0, -1)]


def _dead(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(v) for v in r.hvals(broker.keys(queue).dead_info)]


def test_exhausted_retries_land_in_the_dead_letters_with_every_field(r: redis.Redis) -> None:
    # Given an actor that always fails, with 2 retries, sent with a tenant and a priority
    wa.fails_twice_then_dies.send_with_options(args=("x",), tenant="acme", priority=7)
    # When a worker runs it
    with dramatiq_worker("actors", "tests.worker_actors", queues=["critical"]):
        wait_for(lambda: r.zcard(broker.keys("critical").dead) == 1)
    # Then it ran three times (the first delivery and two retries), then was dead-lettered
    assert _done(r) == ["attempt:x:0", "attempt:x:1", "attempt:x:2"]
    (record,) = _dead(r, "critical")
    assert record["reason"] == "exhausted"
    assert (record["actor"], record["queue"], record["tenant"], record["priority"]) == (
        "fails_twice_then_dies",
        "critical",
        "acme",
        7,
    )
    assert record["attempts"] == 3
    assert record["deliveries"] == 1  # the last delivery; retries start their count again
    assert record["error"]["type"] == "RuntimeError"
    assert record["error"]["message"] == "boom x"
    assert "Traceback" in record["error"]["traceback"]
    assert record["message_id"]
    assert record["first_failure_ms"] < record["dead_lettered_at_ms"]
    # And the stored message is the one sent, retry count aside, with no traceback in it
    (payload,) = r.hvals(broker.keys("critical").dead_msgs)
    assert isinstance(payload, bytes)
    options = broker.encoder.decode(payload)["options"]
    assert options["retries"] == 2
    assert "traceback" not in options
    # And the counters say so
    stats = runtime.queue_stats()["critical"]
    assert (stats["retries_total"], stats["dead_letters_by_reason"]) == (2, {"exhausted": 1})


def test_dead_on_skips_the_retries(r: redis.Redis) -> None:
    # Given an actor declared to die on ValueError, with 5 retries
    wa.dies_on_value_error.send("v")
    # When it raises ValueError in a worker
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]):
        wait_for(lambda: r.zcard(broker.keys("default").dead) == 1)
    # Then it ran once and went straight to the dead letters
    assert _done(r) == ["attempt:v"]
    (record,) = _dead(r, "default")
    assert (record["reason"], record["attempts"], record["error"]["type"]) == ("dead_on", 1, "ValueError")
    assert runtime.queue_stats()["default"]["retries_total"] == 0


def test_retries_are_demoted_to_the_retry_queue_after_the_second_attempt(r: redis.Redis) -> None:
    # Given a critical actor whose retries go to `default` once it has failed twice
    wa.demoted.send("d")
    # When workers consume both queues
    with dramatiq_worker("actors", "tests.worker_actors", queues=["critical", "default"]):
        wait_for(lambda: len(_done(r)) == 4)
    # Then the first attempt and the first retry ran on critical, the later ones on default
    assert _done(r) == ["d:critical:0", "d:critical:1", "d:default:2", "d:default:3"]


def test_a_deferral_keeps_the_retries_and_the_delivery_count(r: redis.Redis) -> None:
    # Given an actor with no retries that defers its first run by 50 ms
    wa.defers_once.send("z")
    # When a worker runs it
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]):
        wait_for(lambda: len(_done(r)) == 1)
    # Then it ran again, without using a retry and with one delivery counted, and nothing died
    assert json.loads(_done(r)[0]) == ["z", 0, 1]
    stats = runtime.queue_stats()["default"]
    assert (stats["deferred_total"], stats["retries_total"], stats["dead_letters_total"]) == (1, 0, 0)


@default(queue="t_backoff", max_retries=50, min_backoff=100, max_backoff=3_000)
def t_exponential(token: int) -> None: ...


@default(queue="t_backoff", max_retries=50, min_backoff=200, max_backoff=1_000, backoff="linear")
def t_linear(token: int) -> None: ...


def _fail_once(actor: Any, retries: int, policy: RetryPolicy) -> tuple[int, int]:
    """Deliver a message that has failed `retries` times, fail it through the policy, settle it
    with the consumer, and return bounds of the delay the broker stored for its retry (ms): the
    eta less the time before the policy ran (at least the delay) and less the time after it (at
    most the delay), so that a stalled machine does not blur the check."""
    sent = actor.send_with_options(args=(1,), retries=retries) if retries else actor.send(1)
    assert sent is not None
    consumer = broker.consume("t_backoff", prefetch=1, timeout=50)
    message = next(consumer)
    assert isinstance(message, MessageProxy)
    before = now_ms()
    policy.after_process_message(broker, message, exception=RuntimeError("fails"))
    after = now_ms()
    consumer.ack(message)
    scheduled: list[tuple[bytes, float]] = broker.client.zrange(  # type: ignore[assignment]
        broker.keys("t_backoff").delayed, 0, 0, withscores=True
    )
    eta = scheduled[0][1]
    broker.client.delete(*broker.keys("t_backoff").message_keys())
    return int(eta) - before, int(eta) - after


def test_exponential_backoff_stays_within_its_bounds_with_full_jitter(r: redis.Redis) -> None:
    # Given the policy, and an actor with min 100 ms, max 3 s, factor 2
    policy = RetryPolicy()
    for retries, ceiling in [(0, 100), (2, 400), (4, 1_600), (7, 3_000)]:
        # When the n-th retry is scheduled 40 times on the real broker
        bounds = [_fail_once(t_exponential, retries, policy) for _ in range(40)]
        delays = [at_least for at_least, _ in bounds]
        # Then every delay is within [min, min(max, min x 2^n)] (1 ms of rounding aside)
        assert min(delays) >= 100 - 1, (retries, bounds)
        assert max(at_most for _, at_most in bounds) <= ceiling + 1, (retries, bounds)
        if ceiling > 100:
            # And they spread over the window (full jitter), not bunched at one end
            assert statistics.pstdev(delays) > (ceiling - 100) / 8, (retries, delays)


def test_linear_backoff_grows_by_its_step_up_to_its_cap(r: redis.Redis) -> None:
    policy = RetryPolicy()
    for retries, expected in [(0, 200), (1, 400), (3, 800), (9, 1_000)]:
        at_least, at_most = _fail_once(t_linear, retries, policy)
        assert at_most - 1 <= expected <= at_least + 1, (retries, at_least, at_most)


def test_backoff_formula_over_many_draws() -> None:
    # Given a seeded random source, 2,000 draws per retry number
    rng = random.Random(7)
    for attempt in range(1, 12):
        draws = [
            backoff_ms("exponential", attempt, min_ms=50, max_ms=5_000, factor=3, rng=rng.uniform) for _ in range(2_000)
        ]
        ceiling = min(5_000, 50 * 3 ** (attempt - 1))
        # Then they stay within [min, ceiling] and their mean is the window's middle (uniform)
        assert min(draws) >= 50
        assert max(draws) <= ceiling
        assert statistics.mean(draws) == pytest.approx((50 + ceiling) / 2, rel=0.05)


def test_an_unknown_retry_queue_is_refused_at_declaration() -> None:
    with pytest.raises(RoutingError, match="retry_queue 'nowhere' is neither a tier nor a declared queue"):

        @default(retry_queue="nowhere")
        def t_bad_retry_queue() -> None: ...


def test_retried_message_is_equal_to_the_sent_one_but_for_its_retry_bookkeeping(r: redis.Redis) -> None:
    # Given a message with arguments and options, failed once through the policy
    sent = t_exponential.send_with_options(args=(42,), tenant="acme", priority=8)
    consumer = broker.consume("t_backoff", prefetch=1, timeout=50)
    message = next(consumer)
    assert isinstance(message, MessageProxy)
    RetryPolicy().after_process_message(broker, message, exception=RuntimeError("once"))
    consumer.ack(message)
    # When the retry is stored
    (payload,) = r.hvals(broker.keys("t_backoff").msgs)
    assert isinstance(payload, bytes)
    stored = broker.encoder.decode(payload)
    # Then it is the same message (id, args, priority, tenant), with a retry count and first failure time
    assert stored["message_id"] == sent.message_id
    assert (stored["args"], stored["options"]["priority"], stored["options"]["tenant"]) == ([42], 8, "acme")
    assert stored["options"]["retries"] == 1
    assert stored["options"]["triage_first_failure_ms"] <= now_ms()
    assert runtime.queue_stats()["t_backoff"]["retrying"] == 1


@default(queue="t_backoff", max_retries=1, on_retry_exhausted="t_exhausted_hook")
def t_gives_up(token: int) -> None: ...


@default(queue="t_hook")
def t_exhausted_hook(message: dict[str, Any], retries: dict[str, Any]) -> None: ...


def test_exhausted_retries_notify_the_on_retry_exhausted_actor(r: redis.Redis) -> None:
    # Given a message that has used its one retry
    t_gives_up.send_with_options(args=(5,), retries=1)
    consumer = broker.consume("t_backoff", prefetch=1, timeout=50)
    message = next(consumer)
    assert isinstance(message, MessageProxy)
    # When it fails again
    RetryPolicy().after_process_message(broker, message, exception=RuntimeError("still failing"))
    consumer.nack(message)
    # Then it is dead-lettered as exhausted, and the hook actor got the message and the counts
    assert message.failed
    (record,) = [json.loads(v) for v in r.hvals(broker.keys("t_backoff").dead_info)]
    assert record["reason"] == "exhausted"
    (payload,) = r.hvals(broker.keys("t_hook").msgs)
    assert isinstance(payload, bytes)
    sent = broker.encoder.decode(payload)
    assert sent["args"][0]["args"] == [5]
    assert sent["args"][1] == {"retries": 1, "max_retries": 1}


@default(queue="t_backoff", retry_on=(ConnectionError,), max_retries=3, min_backoff=10)
def t_retry_on(token: int) -> None: ...


@default(queue="t_backoff", throws=(KeyError,), max_retries=3, min_backoff=10)
def t_throws(token: int) -> None: ...


@default(queue="t_backoff", retry_when=lambda retries, exc: retries < 1, min_backoff=10)
def t_retry_when(token: int) -> None: ...


@default(queue="t_backoff", retry_when=lambda retries, exc: 1 / 0, min_backoff=10)
def t_broken_policy(token: int) -> None: ...


def _decide(
    actor: Any, exception: BaseException, before_settle: Callable[[], object] = lambda: None, **options: Any
) -> tuple[MessageProxy, Any]:
    """Deliver one message of `actor`, fail it with `exception` through the policy, settle it as the
    worker would (ack unless failed), and return the delivered message and the consumer."""
    actor.send_with_options(args=(1,), **options)
    consumer = broker.consume("t_backoff", prefetch=1, timeout=50)
    message = next(consumer)
    assert isinstance(message, MessageProxy)
    before_settle()
    RetryPolicy().after_process_message(broker, message, exception=exception)
    (consumer.nack if message.failed else consumer.ack)(message)
    return message, consumer


def _first_eta() -> int:
    scheduled: list[tuple[bytes, float]] = broker.client.zrange(  # type: ignore[assignment]
        broker.keys("t_backoff").delayed, 0, 0, withscores=True
    )
    return int(scheduled[0][1])


def _reasons(r: redis.Redis) -> list[str]:
    return [json.loads(v)["reason"] for v in r.hvals(broker.keys("t_backoff").dead_info)]


def test_retry_on_retries_only_those_exceptions(r: redis.Redis) -> None:
    # Given an actor that retries only ConnectionError
    _decide(t_retry_on, ConnectionError("refused"))
    assert runtime.queue_stats()["t_backoff"]["retrying"] == 1
    # When it raises something else, then it goes straight to the dead letters
    broker.client.delete(*broker.keys("t_backoff").message_keys())
    _decide(t_retry_on, ValueError("bad"))
    assert _reasons(r) == ["dead_on"]


def test_throws_is_dead_on(r: redis.Redis) -> None:
    _decide(t_throws, KeyError("missing"))
    assert _reasons(r) == ["dead_on"]


def test_retry_when_replaces_max_retries(r: redis.Redis) -> None:
    _decide(t_retry_when, RuntimeError("first"))
    assert runtime.queue_stats()["t_backoff"]["retrying"] == 1
    _decide(t_retry_when, RuntimeError("second"), retries=1)
    assert _reasons(r) == ["exhausted"]


def test_a_policy_that_raises_dead_letters_the_message_instead_of_losing_it(r: redis.Redis) -> None:
    # Given a retry_when that raises ZeroDivisionError
    message, _ = _decide(t_broken_policy, RuntimeError("boom"))
    # Then the message is not acked away: it is in the dead letters, exhausted
    assert message.failed
    assert _reasons(r) == ["exhausted"]


def test_dramatiq_retry_with_a_delay_waits_that_long(r: redis.Redis) -> None:
    before = now_ms()
    _decide(t_exponential, Retry(delay=700))
    assert 700 <= _first_eta() - before <= 700 + 2_000  # not the actor's 100 ms backoff; stalls aside


def test_a_deferral_is_the_same_message_with_its_priority_tenant_and_delay(r: redis.Redis) -> None:
    # Given a message with a priority and a tenant, deferred by 500 ms
    before = now_ms()
    message, _ = _decide(t_exponential, Defer(delay_ms=500), priority=8, tenant="acme")
    # Then the same message (same Redis id) waits in the delayed set, at its level and tenant
    member = broker.client.zrange(broker.keys("t_backoff").delayed, 0, 0)[0]
    assert member == f"{message.options['redis_message_id']}|8|acme".encode()
    assert 500 <= _first_eta() - before <= 500 + 2_000
    stats = runtime.queue_stats()["t_backoff"]
    assert (stats["retrying"], stats["delayed"], stats["deferred_total"]) == (0, 1, 1)


@default(queue="t_backoff", on_failure="t_failure_hook")
def t_with_failure_hook(token: int) -> None: ...


@default(queue="t_hook")
def t_failure_hook(message: dict[str, Any], error: dict[str, Any]) -> None: ...


def test_a_deferral_does_not_fire_on_failure(r: redis.Redis) -> None:
    # Given an actor with an on_failure callback
    t_with_failure_hook.send(1)
    message = next(broker.consume("t_backoff", prefetch=1, timeout=50))
    assert isinstance(message, MessageProxy)
    # When it defers, then no failure is reported; when it fails, one is
    Callbacks().after_process_message(broker, message, exception=Defer(delay_ms=10))
    assert broker.counts("t_hook")[0] == 0
    Callbacks().after_process_message(broker, message, exception=RuntimeError("failed"))
    assert broker.counts("t_hook")[0] == 1


def test_a_retry_that_redis_refuses_is_dead_lettered_not_left_in_flight(r: redis.Redis) -> None:
    # Given a message in flight, and then the queue's delayed set replaced by a string (Redis
    # answers WRONGTYPE to the retry script)
    def break_delayed_set() -> None:
        r.set(broker.keys("t_backoff").delayed, "not a zset")

    # When it fails and its retry is refused
    _decide(t_exponential, RuntimeError("boom"), before_settle=break_delayed_set)
    # Then it is in the dead letters as retry-failed, and no longer in flight
    assert _reasons(r) == ["retry-failed"]
    keys = broker.keys("t_backoff")
    assert r.hlen(keys.acks(broker.broker_id)) == 0
    assert r.hget(keys.stats, "running") == b"0"
    assert r.hlen(keys.msgs) == 0  # nothing half-written


def test_a_bad_backoff_is_refused_at_declaration() -> None:
    # When an actor is declared with a backoff kind that does not exist
    # Then the declaration fails, naming the actor and the option (not a log line, then a broken actor)
    with pytest.raises(ValueError, match="actor 'bad_backoff': backoff must be 'exponential' or 'linear'"):
        default(actor_name="bad_backoff", backoff="fibonacci")(lambda: None)
