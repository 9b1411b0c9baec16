"""The benchmark actors on Triage: the full default middleware stack, msgpack."""

from __future__ import annotations

from typing import Any

from actors import background, critical, default, enqueue_batch

from . import _probes


@default(queue="bench")
def noop() -> None:
    _probes.noop()


@default(queue="bench")
def redis_call() -> None:
    """What a real actor does: one round trip to Redis."""
    _probes.one_redis_call()


@default(queue="bench", circuit="telegram")
def noop_breaker() -> None:
    """The no-op behind a closed circuit breaker: what the gate and the recording cost."""
    _probes.noop()


@default(queue="bench", rate_limit="1000000/s", rate_burst=1000000)
def noop_rate_limited() -> None:
    """The no-op behind a fleet-wide rate limit that never binds: what the limit's check costs."""
    _probes.noop()


@default(queue="bench", periodic="* * * * *")
def noop_periodic() -> None:
    """A per-minute job: the bench sends its ticks as a scheduler does."""


@default(queue="bench", min_backoff=1, max_backoff=10)
def fails_once(token: int) -> None:
    _probes.fail_once(token)


@background
def background_work(ms: float) -> None:
    _probes.sleep_ms(ms)


@critical
def critical_probe(sent_at: float) -> None:
    _probes.record_wait(sent_at, "critical")


@default(queue="bench")
def tenant_job(sent_at: float, label: str, ms: float) -> None:
    if label:
        _probes.record_wait(sent_at, label)
    _probes.sleep_ms(ms)


@default(queue="bench")
def tenant_flood(ms: float) -> None:
    """Tenant A's flood: records when each run starts, to check A's rate against its limit."""
    _probes.record_start("A")
    _probes.sleep_ms(ms)


@default(queue="bench")
def late_probe(due: float, label: str) -> None:
    """A delayed message: how late after its due time it starts."""
    _probes.record_lateness(due, label)


@default(queue="bench", max_retries=1)
def retry_probe(token: str, delay_ms: int, label: str) -> None:
    """Fails its first run with Retry(delay=delay_ms); the retry records how late it started."""
    _probes.retry_after(token, delay_ms, label)


def _options(tenant: str | None) -> dict[str, Any]:
    return {"tenant": tenant} if tenant else {}


def send(actor: Any, *args: Any, tenant: str | None = None, delay: int | None = None) -> None:
    actor.send_with_options(args=args, delay=delay, **_options(tenant))


def send_many(actor: Any, argss: list[tuple[Any, ...]], tenant: str | None = None, delay: int | None = None) -> None:
    for start in range(0, len(argss), 1000):
        chunk = argss[start : start + 1000]
        enqueue_batch([(actor.message_with_options(args=args, **_options(tenant)), delay) for args in chunk])
