"""Circuit breakers in real worker processes (2 processes x 8 threads) against a real HTTP
dependency that the test makes healthy, failing (500s) or slow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from actors import runtime
from tests import breaker_actors as ba
from tests.downstream import Downstream, downstream
from tests.helpers import Worker, dramatiq_worker, triage, wait_for

THRESHOLD, PROBES, THREADS, PROCESSES = 5, 2, 8, 2


def worker_env(server: Downstream, recovery_s: float) -> dict[str, str]:
    return {
        "TEST_DOWNSTREAM_URL": server.url,
        "TRIAGE_BREAKERS__TELEGRAM__FAILURE_THRESHOLD": str(THRESHOLD),
        "TRIAGE_BREAKERS__TELEGRAM__RECOVERY_TIMEOUT": str(recovery_s),
        "TRIAGE_BREAKERS__TELEGRAM__HALF_OPEN_PROBES": str(PROBES),
    }


@contextmanager
def workers(
    server: Downstream, *, queues: list[str], recovery_s: float = 2, processes: int = 1
) -> Iterator[list[Worker]]:
    with ExitStack() as stack:
        env = worker_env(server, recovery_s)
        yield [
            stack.enter_context(
                dramatiq_worker("actors", "tests.breaker_actors", queues=queues, threads=THREADS, **env)  # type: ignore[arg-type]
            )
            for _ in range(processes)
        ]


def _done(r: redis.Redis) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in r.lrange(ba.DONE, 0, -1)]


def _breaker() -> dict[str, Any]:
    return runtime.breakers.store.status(["telegram"])["telegram"]


def _spec() -> Any:
    return runtime.breakers["telegram"].spec


def _open_and_send(actor: Any, prefix: str, count: int) -> None:
    """The breaker opened by an operator for a minute, then `count` messages sent to `actor`."""
    runtime.breakers.store.force_open(_spec(), for_ms=60_000)
    for i in range(count):
        actor.send(f"{prefix}-{i}")


@dataclass
class OutageRun:
    sent: int
    calls_in_outage: int
    failed_calls: int
    calls_after_opening: int  # failed calls more than 1 s after the breaker opened: probes only
    breaker: dict[str, Any]
    queue: dict[str, Any]
    logged_openings: int  # "Circuit breaker 'telegram' opened" lines in the workers' logs
    done: list[str]
    drained_s: float


def outage_under_a_stream(r: redis.Redis, *, outage_s: float, rate: float, recovery_s: float) -> OutageRun:
    """Two worker processes x 8 threads; the dependency fails with 500s for `outage_s` under a
    stream of `rate` messages/s, then recovers; returns what the dependency and Redis saw."""
    runtime.breakers.store.reset(_spec())
    with (
        downstream() as server,
        workers(server, queues=["default"], recovery_s=recovery_s, processes=PROCESSES) as running,
    ):
        for i in range(20):
            ba.call_telegram.send(f"warm-{i}")
        wait_for(lambda: len(_done(r)) == 20)
        server.mode = "failing"
        outage_start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - outage_start) < outage_s:
            while sent < elapsed * rate:
                ba.call_telegram.send(f"m-{sent}")
                sent += 1
            time.sleep(0.01)
        server.mode = "healthy"
        outage_end = time.monotonic()
        wait_for(lambda: len(_done(r)) >= 20 + sent, timeout=max(60, 3 * recovery_s))
        drained = time.monotonic() - outage_end
        time.sleep(0.2)  # the last log lines
        logged = sum(1 for w in running for line in w.log if "Circuit breaker 'telegram' opened" in line)
    failed = server.times(500)
    opened_at = failed[THRESHOLD - 1] if len(failed) >= THRESHOLD else outage_start
    return OutageRun(
        sent=sent,
        calls_in_outage=server.count(since=outage_start, until=outage_end),
        failed_calls=len(failed),
        calls_after_opening=sum(1 for t in failed if t > opened_at + 1.0),
        breaker=_breaker(),
        queue=dict(runtime.queue_stats()["default"]),
        logged_openings=logged,
        done=_done(r),
        drained_s=drained,
    )


def test_an_outage_opens_the_breaker_defers_the_stream_and_drains_by_itself(r: redis.Redis) -> None:
    # Given two worker processes of 8 threads calling a dependency through the breaker
    # When the dependency fails every call for 6 s under 20 messages/s, then recovers
    run = outage_under_a_stream(r, outage_s=6, rate=20, recovery_s=2)
    # Then every message ran once, after the recovery, and none was dead-lettered
    expected = {f"warm-{i}" for i in range(20)} | {f"m-{i}" for i in range(run.sent)}
    assert sorted(run.done) == sorted(expected)
    assert run.queue["dead_letters_total"] == 0
    # And the dependency saw no storm: the failures that opened it, the calls in flight then,
    # and the probes; more than 1 s after the opening, probes only
    rounds = run.breaker["half_opened_total"]
    assert run.failed_calls <= THRESHOLD + PROCESSES * THREADS + PROBES * rounds
    assert run.calls_after_opening <= PROBES * rounds
    # And the outage cost no retries but those of the failures before the breaker opened
    assert run.queue["retries_total"] <= THRESHOLD - 1
    # And deferred messages did not spin: each waited for the next probe round (or, while
    # probes ran, for a second), so deferrals are bounded by the rounds, not by the time
    assert 0 < run.queue["deferred_total"] <= run.sent * (2 * rounds + 2)
    # And each opening was logged once, by the one process that made it
    assert run.logged_openings == run.breaker["opened_total"]
    # And the breaker closed by itself
    assert run.breaker["state"] == "closed"
    assert run.breaker["opened_total"] >= 1
    assert run.breaker["closed_total"] >= 1


def test_a_slow_dependency_opens_the_breaker_by_timeouts(r: redis.Redis) -> None:
    # Given a dependency that answers in 6 s, and actors that give up after 2 s
    runtime.breakers.store.reset(_spec())
    with downstream() as server, workers(server, queues=["default"]):
        server.mode, server.slow_s = "slow", 6.0
        # When 40 messages are sent
        for i in range(40):
            ba.call_telegram.send(f"s-{i}")
        # Then the timeouts open the breaker, and the slow dependency is called no more than that
        wait_for(lambda: _breaker()["opened_total"] >= 1, timeout=20)
        time.sleep(1)
        slow_calls = server.count()
        assert slow_calls <= THRESHOLD + THREADS
        assert _breaker()["last_error"] in ("TimeoutError", "URLError", "timeout")
        # When it is fast again, everything runs
        server.mode = "healthy"
        wait_for(lambda: len(_done(r)) == 40, timeout=30)
    assert runtime.queue_stats()["default"]["dead_letters_total"] == 0


def test_open_breaker_policies_demote_dead_letter_and_drop_without_calling(r: redis.Redis) -> None:
    # Given the breaker opened by an operator for a minute
    runtime.breakers.store.force_open(_spec(), for_ms=60_000)
    with downstream() as server:
        # When messages of actors with each on_open policy reach a default-tier worker
        for i in range(3):
            ba.demoted_when_open.send(f"bg-{i}")
        ba.call_telegram.send_with_options(args=("bg-msg",), on_open="background")  # the message's own policy
        ba.dead_when_open.send("dl")
        ba.dropped_when_open.send("drop")
        with workers(server, queues=["default"]):
            wait_for(lambda: runtime.broker.counts("default") == (0, 0, 0), timeout=20)
        # Then nothing called the dependency
        assert server.calls == []
        # And `background` moved its messages to the background queue, retries untouched
        stats = runtime.queue_stats()
        assert stats["default"]["moved_total"] == 4
        assert stats["default"]["retries_total"] == 0
        assert stats["background"]["queued"] + stats["background"]["delayed"] == 4
        # And `dead_letter` dead-lettered with reason circuit-open; `drop` dropped and counted
        assert stats["default"]["dead_letters_by_reason"] == {"circuit-open": 1}
        assert _breaker()["dropped_total"] == 1
        # When the breaker is reset and a background worker runs
        runtime.breakers.store.reset(_spec())
        with workers(server, queues=["background"]):
            wait_for(lambda: len(_done(r)) == 4, timeout=20)
        # Then the demoted messages ran there
        assert sorted(_done(r)) == ["bg-0", "bg-1", "bg-2", "bg-msg"]
        assert server.count() == 4


def test_a_dedicated_queue_is_paused_while_open_and_resumed_on_reset(r: redis.Redis) -> None:
    # Given the breaker open, and an actor on a queue of its own with pause_queue_on_open
    _open_and_send(ba.paused_when_open, "p", 10)
    with downstream() as server, workers(server, queues=["telegram_outbox"]):
        # When the worker meets the open breaker
        wait_for(lambda: runtime.broker.is_paused("telegram_outbox"), timeout=20)
        # Then the queue is paused, its messages wait, and the dependency is not called
        queued, delayed, running = runtime.broker.counts("telegram_outbox")
        assert queued + delayed + running == 10
        assert server.calls == []
        # When an operator resets the breaker
        reset = triage("breakers", "reset", "telegram")
        assert reset.returncode == 0, reset.stderr
        # Then everything runs
        wait_for(lambda: len(_done(r)) == 10, timeout=20)
    assert not runtime.broker.is_paused("telegram_outbox")


def test_a_probe_admitted_under_concurrency_is_exactly_the_probe_count(r: redis.Redis) -> None:
    # Given an open breaker due for probing, and a dependency that holds each call 1.5 s
    runtime.breakers.store.force_open(_spec(), for_ms=1)
    time.sleep(0.01)
    with downstream() as server:
        server.mode, server.slow_s = "slow", 1.5
        # When 32 messages reach 2 processes x 8 threads at once
        with workers(server, queues=["default"], processes=PROCESSES):
            for i in range(32):
                ba.call_telegram.send(f"h-{i}")
            wait_for(lambda: server.count() >= 1, timeout=20)
            # Then, while the probes are held, the dependency receives exactly the probes
            seen = []
            for _ in range(10):
                seen.append(server.count())
                time.sleep(0.1)
            assert set(seen[5:]) == {PROBES}
            assert max(seen) == PROBES
            # And once they succeed, everything runs
            wait_for(lambda: len(_done(r)) == 32, timeout=30)


def test_circuit_open_raised_by_actor_code_defers_without_a_retry(r: redis.Redis) -> None:
    # Given the breaker open, and an actor that wraps its call in triage.breaker(...) only
    _open_and_send(ba.guarded_call, "g", 3)
    with downstream() as server, workers(server, queues=["default"]):
        # When the worker runs them
        wait_for(lambda: runtime.queue_stats()["default"]["deferred_total"] >= 3, timeout=20)
        # Then each was deferred, none retried, and the dependency was not called
        assert runtime.queue_stats()["default"]["retries_total"] == 0
        assert server.calls == []
        # When the breaker is reset, they run
        runtime.breakers.store.reset(_spec())
        wait_for(lambda: len(_done(r)) == 3, timeout=20)
