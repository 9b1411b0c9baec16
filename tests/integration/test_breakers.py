"""Circuit breakers on a real Redis: the state machine, fleet-wide probes, the closed-state cache,
what counts as a failure, the configuration, the operator commands, the tenacity pattern."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import tenacity
from dramatiq.broker import MessageProxy
from dramatiq.message import Message

import triage
from actors import runtime
from tests.helpers import env_with, wait_for
from tests.helpers import triage as triage_cli
from triage.broker.breaker_state import CACHE_TTL_S, BreakerSpec, CircuitStore, Verdict
from triage.middleware import CircuitBreakers
from triage.middleware.circuit import Breaker, CircuitOpen, UnknownBreaker
from triage.runtime import build
from triage.settings import ConfigError, load_settings


class ClientError(Exception):
    """A 4xx: the dependency answered; not an outage."""


@pytest.fixture
def stores(redis_url: str) -> Iterator[list[CircuitStore]]:
    """Two stores on the same namespace: two worker processes' views of the same breakers."""
    made = [CircuitStore(client=redis.Redis.from_url(redis_url), namespace="t") for _ in range(2)]
    yield made
    for store in made:
        store.close()
        store.client.close()


def _fail(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        permit = breaker.permit()
        breaker.finish(permit, RuntimeError("503"))


def test_opens_after_the_threshold_and_refuses_at_once_with_the_time_to_the_probe(
    r: redis.Redis, stores: list[CircuitStore]
) -> None:
    # Given a breaker that opens after 3 consecutive failures, with a 60 s recovery
    breaker = Breaker(BreakerSpec("bank", failure_threshold=3, recovery_ms=60_000), stores[0])
    # When two calls fail, one succeeds, then three fail
    _fail(breaker, 2)
    breaker.finish(breaker.permit(), None)
    _fail(breaker, 2)
    assert breaker.permit()  # still closed: the success reset the count
    _fail(breaker, 1)
    # Then the third consecutive failure opened it: the next call is refused without running
    with pytest.raises(CircuitOpen) as refused:
        breaker.permit()
    assert refused.value.breaker == "bank"
    assert 59 < refused.value.retry_after <= 60
    state = stores[0].status(["bank"])["bank"]
    assert (state["state"], state["opened_total"], state["rejected_total"]) == ("open", 1, 1)
    assert state["last_error"] == "RuntimeError"


def test_an_exception_that_does_not_count_is_a_success(stores: list[CircuitStore]) -> None:
    # Given a breaker that ignores client errors and counts only errors whose text says 5xx
    breaker = Breaker(
        BreakerSpec("api", failure_threshold=2),
        stores[0],
        ignore=(ClientError,),
        counts=lambda exc: "5" in str(exc),
    )
    # When 4xx and non-5xx errors keep coming, between two 5xx
    for exc in (RuntimeError("503"), ClientError("404"), ValueError("bad"), RuntimeError("502")):
        breaker.finish(breaker.permit(), exc)
    # Then it is still closed (each non-counting error reset the count); two 5xx in a row open it
    breaker.finish(breaker.permit(), RuntimeError("500"))
    with pytest.raises(CircuitOpen):
        breaker.permit()


def test_half_open_admits_exactly_the_probe_count_across_processes(stores: list[CircuitStore]) -> None:
    # Given a breaker with 3 probes that is open and due for probing, seen by two processes
    spec = BreakerSpec("sms", failure_threshold=1, recovery_ms=300, half_open_probes=3)
    breakers = [Breaker(spec, store) for store in stores]
    _fail(breakers[0], 1)
    time.sleep(0.35)
    # When 32 threads, half on each process, ask for a call at once
    admitted: list[object] = []
    start = threading.Barrier(32)

    def call(index: int) -> None:
        start.wait()
        with contextlib.suppress(CircuitOpen):
            admitted.append(breakers[index % 2].permit())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly 3 were admitted, all as probes
    assert len(admitted) == 3
    assert all(getattr(p, "probe", False) for p in admitted)


def test_a_failing_probe_reopens_and_succeeding_probes_close(stores: list[CircuitStore]) -> None:
    # Given an open breaker with 2 probes, due for probing
    spec = BreakerSpec("tg", failure_threshold=1, recovery_ms=200, half_open_probes=2)
    breaker = Breaker(spec, stores[0])
    _fail(breaker, 1)
    time.sleep(0.25)
    # When one probe fails
    first, second = breaker.permit(), breaker.permit()
    breaker.finish(first, RuntimeError("still down"))
    # Then it is open again for another recovery timeout; the other probe's success says nothing
    breaker.finish(second, None)
    with pytest.raises(CircuitOpen):
        breaker.permit()
    assert stores[0].status(["tg"])["tg"]["state"] == "open"
    # When both probes of the next round succeed
    time.sleep(0.25)
    probes = [breaker.permit(), breaker.permit()]
    for probe in probes:
        breaker.finish(probe, None)
    # Then it is closed, its counts cleared
    state = stores[0].status(["tg"])["tg"]
    assert (state["state"], state["failures"], state["opened_total"], state["closed_total"]) == ("closed", 0, 2, 1)


def test_a_lost_probe_is_replaced_after_the_recovery_timeout(stores: list[CircuitStore]) -> None:
    # Given a half-open breaker whose only probe was admitted and never reported (its worker died)
    breaker = Breaker(BreakerSpec("bank", failure_threshold=1, recovery_ms=200), stores[0])
    _fail(breaker, 1)
    time.sleep(0.25)
    breaker.permit()
    with pytest.raises(CircuitOpen):
        breaker.permit()
    # When the recovery timeout passes again
    time.sleep(0.25)
    # Then another probe is admitted
    assert breaker.permit().probe


def test_the_result_of_a_call_admitted_before_a_transition_is_ignored(stores: list[CircuitStore]) -> None:
    # Given a call admitted while closed, then the breaker opened by an operator and reset
    breaker = Breaker(BreakerSpec("api", failure_threshold=1), stores[0])
    old = breaker.permit()
    stores[1].force_open(breaker.spec)
    stores[1].reset(breaker.spec)
    # When the old call reports a failure
    breaker.finish(old, RuntimeError("late"))
    # Then it does not open the breaker it no longer belongs to
    assert breaker.permit()


def test_rate_mode_opens_on_the_failure_rate_once_the_minimum_calls_were_made(stores: list[CircuitStore]) -> None:
    # Given a breaker that opens at 50 % failures over 60 s, after at least 10 calls
    breaker = Breaker(BreakerSpec("s3", failure_rate=0.5, min_calls=10, window_ms=60_000), stores[0])
    # When the first 5 calls all fail
    _fail(breaker, 5)
    # Then it is still closed: too few calls to judge
    breaker.finish(breaker.permit(), None)
    # When 3 more calls succeed (9 in all) and one more fails: 6 of 10 failed
    for _ in range(3):
        breaker.finish(breaker.permit(), None)
    _fail(breaker, 1)
    # Then it opened
    with pytest.raises(CircuitOpen):
        breaker.permit()
    state = stores[0].status(["s3"])["s3"]
    assert state["window_calls"] >= 10
    assert state["window_failures"] == 6


def test_a_closed_breaker_costs_no_round_trip_per_call(r: redis.Redis, stores: list[CircuitStore]) -> None:
    # Given a closed breaker that has been read once, and its process subscribed to transitions
    breaker = Breaker(BreakerSpec("api"), stores[0])
    breaker.finish(breaker.permit(), None)
    wait_for(lambda: stores[0]._listener is not None and stores[0]._listener.live, timeout=5)
    breaker.finish(breaker.permit(), None)
    before = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    # When 1,000 calls succeed within the cache's lifetime
    started = time.monotonic()
    for _ in range(1000):
        breaker.finish(breaker.permit(), None)
    elapsed = time.monotonic() - started
    # Then Redis ran the script at most once per cache lifetime, not once per call
    after = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert after - before <= 1 + elapsed / CACHE_TTL_S


def test_an_opening_reaches_the_processes_that_cached_it_closed(stores: list[CircuitStore]) -> None:
    # Given process A caching the breaker as closed
    spec = BreakerSpec("tg")
    a, b = Breaker(spec, stores[0]), Breaker(spec, stores[1])
    a.finish(a.permit(), None)
    wait_for(lambda: stores[0]._listener is not None and stores[0]._listener.live, timeout=5)
    a.finish(a.permit(), None)
    assert stores[0]._cached("tg") is not None
    # When process B opens it
    stores[1].force_open(spec, for_ms=60_000)
    # Then A refuses calls at once, well before its cached state would have expired
    started = time.monotonic()
    wait_for(lambda: stores[0]._cached("tg") is None, timeout=CACHE_TTL_S)
    with pytest.raises(CircuitOpen):
        a.permit()
    assert time.monotonic() - started < CACHE_TTL_S
    assert b  # both processes see one breaker


def test_an_unreachable_redis_admits_calls_uncounted() -> None:
    # Given a store whose Redis does not answer
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = CircuitStore(client=client, namespace="t")
    breaker = Breaker(BreakerSpec("api", failure_threshold=1), store)
    # When calls fail
    for _ in range(3):
        breaker.finish(breaker.permit(), RuntimeError("down"))
    # Then they were admitted all the same (fail open), and nothing raised
    assert breaker.permit().generation == -1
    store.close()


def test_breakers_come_from_config_and_the_environment_overrides_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a service config declaring a breaker, and an env override of one of its fields
    config = {"BREAKERS": {"bank": {"failure_threshold": 5, "recovery_timeout": 60}}}
    monkeypatch.setenv("TRIAGE_BREAKERS__BANK__RECOVERY_TIMEOUT", "5")
    settings = load_settings(config)
    # Then the env changed that field only
    assert settings.breakers["bank"].failure_threshold == 5
    assert settings.breakers["bank"].recovery_timeout == 5
    # And the runtime holds it, with its spec in milliseconds
    assert build(settings).breakers["bank"].spec.recovery_ms == 5000


@pytest.mark.parametrize(
    ("breakers", "named"),
    [
        ({"Bank": {}}, "config.BREAKERS"),
        ({"bank": {"failure_threshold": 0}}, "config.BREAKERS['bank']['failure_threshold']"),
        ({"bank": {"recovery": 5}}, "config.BREAKERS['bank']['recovery']"),
    ],
)
def test_a_bad_breaker_setting_names_itself(breakers: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"BREAKERS": breakers})
    assert named in str(error.value)


def test_an_ignore_class_that_cannot_be_loaded_is_an_error_at_start() -> None:
    settings = load_settings({"BREAKERS": {"bank": {"ignore": ["nowhere.Error"], "counts": None}}})
    with pytest.raises(ConfigError, match=r"TRIAGE_BREAKERS__BANK__IGNORE: cannot load 'nowhere\.Error'"):
        build(settings)


def test_an_undeclared_breaker_is_a_clear_error() -> None:
    # At declaration of an actor...
    with pytest.raises(ValueError, match=r"actor 'bad': circuit: no circuit breaker named 'nope'"):
        triage.default(actor_name="bad", circuit="nope")(lambda: None)
    # ...and around a call
    with pytest.raises(UnknownBreaker, match="declared: telegram"), triage.breaker("nope"):
        pass


def test_on_open_must_be_a_known_policy() -> None:
    with pytest.raises(ValueError, match="on_open must be one of defer, background, dead_letter, drop"):
        triage.default(actor_name="bad_policy", circuit="telegram", on_open="requeue")(lambda: None)


def test_the_guard_records_each_thread_s_call_on_its_own(r: redis.Redis) -> None:
    # Given one guard object shared by 8 threads, every call failing with a non-counting error
    guard = triage.breaker("telegram")
    runtime.breakers.store.reset(runtime.breakers["telegram"].spec)
    errors: list[BaseException] = []

    def call() -> None:
        for _ in range(20):
            try:
                with guard:
                    time.sleep(0.001)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then no permit was mixed up between threads and the breaker stays closed
    assert errors == []
    assert runtime.breakers.store.status(["telegram"])["telegram"]["state"] == "closed"


def test_tenacity_retries_a_call_and_stops_as_soon_as_the_breaker_opens(r: redis.Redis) -> None:
    # Given the documented pattern: tenacity retries the call, except when the breaker is open
    runtime.breakers.store.reset(runtime.breakers["telegram"].spec)
    calls: list[int] = []

    @tenacity.retry(
        retry=tenacity.retry_if_not_exception_type(CircuitOpen),
        stop=tenacity.stop_after_attempt(20),
        wait=tenacity.wait_none(),
        reraise=True,
    )
    @triage.breaker("telegram")
    def send(text: str) -> None:
        calls.append(1)
        raise ConnectionError("gateway down")

    # When the dependency is down
    with pytest.raises(CircuitOpen) as refused:
        send("hi")
    # Then tenacity stopped at the breaker's threshold (5 calls), not at its own 20 attempts
    assert len(calls) == 5
    assert refused.value.retry_after > 0
    runtime.breakers.store.reset(runtime.breakers["telegram"].spec)


def test_cli_lists_opens_for_a_while_and_resets(r: redis.Redis) -> None:
    # Given a breaker a worker declared, and a queue it paused
    env = env_with()
    runtime.breakers.store.declare(["telegram"])
    runtime.broker.pause_for("default", ms=60_000, owner="breaker:telegram")
    # When an operator opens it for 10 minutes
    opened = triage_cli("breakers", "open", "telegram", "--for", "10m", env=env)
    assert opened.returncode == 0, opened.stderr
    # Then the listing shows it open, forced, with the time to the next probe
    listing = json.loads(triage_cli("breakers", "--json", env=env).stdout)["breakers"]["telegram"]
    assert listing["state"] == "open"
    assert listing["forced"]
    assert 590 < listing["next_probe_in_seconds"] <= 600
    table = triage_cli("breakers", env=env).stdout
    assert "telegram" in table
    assert "open*" in table
    # When it is reset
    reset = triage_cli("breakers", "reset", "telegram", env=env)
    # Then it is closed, and the queue it paused is resumed
    assert reset.returncode == 0
    assert "resumed default" in reset.stdout
    assert json.loads(triage_cli("breakers", "--json", env=env).stdout)["breakers"]["telegram"]["state"] == "closed"
    assert not runtime.broker.is_paused("default")
    # And an unknown name exits with 3, naming the known ones
    unknown = triage_cli("breakers", "reset", "telegarm", env=env)
    assert unknown.returncode == 3
    assert "known: telegram" in unknown.stderr


def test_an_operator_pause_is_not_lifted_by_a_breaker(r: redis.Redis) -> None:
    # Given a queue an operator paused
    runtime.broker.pause("default")
    # When a breaker pauses it too, then resumes it
    assert not runtime.broker.pause_for("default", ms=60_000, owner="breaker:telegram")
    assert not runtime.broker.resume_if_paused_by("default", "breaker:telegram")
    # Then it is still paused
    assert runtime.broker.is_paused("default")


def test_a_lost_probe_reporting_late_does_not_count_in_the_next_round(stores: list[CircuitStore]) -> None:
    # Given a half-open breaker with one probe, whose probe C was presumed lost and replaced by D
    breaker = Breaker(BreakerSpec("bank", failure_threshold=1, recovery_ms=200), stores[0])
    _fail(breaker, 1)
    time.sleep(0.25)
    lost = breaker.permit()
    time.sleep(0.25)
    replacement = breaker.permit()
    # When C reports late: released, then as a success
    breaker.release(lost)
    breaker.finish(lost, None)
    # Then the round still has its one probe out (no second admitted), and the breaker is not closed
    with pytest.raises(CircuitOpen):
        breaker.permit()
    assert stores[0].status(["bank"])["bank"]["state"] == "half_open"
    # And D's success closes it
    breaker.finish(replacement, None)
    assert stores[0].status(["bank"])["bank"]["state"] == "closed"


def test_a_failure_in_flight_when_the_breaker_opened_is_told_how_long_to_wait(stores: list[CircuitStore]) -> None:
    # Given a call admitted while closed, then the breaker opened by other failures
    breaker = Breaker(BreakerSpec("tg", failure_threshold=1, recovery_ms=30_000), stores[0])
    in_flight = breaker.permit()
    _fail(breaker, 1)
    # When the call in flight fails too
    tripped = breaker.finish(in_flight, RuntimeError("503"))
    # Then it is treated as refused, with the time to the next probe (not 0: it would spin)
    assert tripped is not None
    assert 29 < tripped.retry_after <= 30


def test_an_operator_reset_of_a_closed_breaker_is_no_transition(stores: list[CircuitStore]) -> None:
    # Given a closed breaker with failures counted
    breaker = Breaker(BreakerSpec("api", failure_threshold=5), stores[0])
    _fail(breaker, 2)
    # When it is reset, and opened twice
    stores[0].reset(breaker.spec)
    stores[0].force_open(breaker.spec, for_ms=60_000)
    stores[0].force_open(breaker.spec, for_ms=120_000)
    # Then only the change of state counted, and the second open moved the probe time
    state = stores[0].status(["api"])["api"]
    assert (state["closed_total"], state["opened_total"], state["failures"]) == (0, 1, 0)
    assert 119 < state["next_probe_in_seconds"] <= 120


def test_a_lost_subscription_drops_the_cached_state(r: redis.Redis, stores: list[CircuitStore]) -> None:
    # Given a process caching a closed breaker
    breaker = Breaker(BreakerSpec("tg"), stores[0])
    breaker.finish(breaker.permit(), None)
    wait_for(lambda: stores[0]._listener is not None and stores[0]._listener.live, timeout=5)
    breaker.finish(breaker.permit(), None)
    assert stores[0]._cached("tg") is not None
    # When Redis drops its subscription connection
    r.client_kill_filter(_type="pubsub")
    # Then the cache is not trusted until it subscribed again (a transition may have been missed)
    wait_for(lambda: stores[0]._cached("tg") is None, timeout=5)


def test_a_gate_over_several_breakers_gives_back_the_probe_it_took(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a runtime with breakers a (half-open, one probe) and b (open), and a message gated by both
    monkeypatch.setenv("REDIS_URL", redis_url)
    settings = load_settings(
        {"BREAKERS": {"a": {"failure_threshold": 1, "recovery_timeout": 0.1}, "b": {}}}, namespace="gate"
    )
    rt = build(settings)
    gate = next(m for m in rt.broker.middleware if isinstance(m, CircuitBreakers))
    a, b = rt.breakers["a"], rt.breakers["b"]
    _fail(a, 1)
    time.sleep(0.15)
    rt.breakers.store.force_open(b.spec, for_ms=60_000)
    message = MessageProxy(Message("default", "x", (), {}, {"circuit": ["a", "b"]}))
    # When the gate runs
    with pytest.raises(CircuitOpen) as refused:
        gate.before_process_message(rt.broker, message)
    # Then b refused it, and a's probe went back: another call gets it
    assert refused.value.breaker == "b"
    assert a.permit().probe
    rt.breakers.store.close()


def test_a_queue_a_breaker_paused_is_resumed_when_it_closes(r: redis.Redis) -> None:
    # Given a queue paused by the telegram breaker
    runtime.broker.declare_queue("telegram_outbox")
    runtime.broker.pause_for("telegram_outbox", ms=60_000, owner="breaker:telegram")
    gate = next(m for m in runtime.broker.middleware if isinstance(m, CircuitBreakers))
    assert gate.broker is not None
    # When the breaker's probes close it in this process
    runtime.breakers._transition("telegram", Verdict(True, False, "closed", 9, 0, 0, "closed"))
    # Then the queue is resumed
    assert not runtime.broker.is_paused("telegram_outbox")
