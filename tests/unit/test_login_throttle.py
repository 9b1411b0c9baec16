"""The login throttle (`triage.admin.dashboard.throttle`) on a clock of the test's own: a limit per
address and one overall, refilled over the window, refusals not counted, and memory bounded with
O(1) work per failure however many addresses fail."""

from __future__ import annotations

import asyncio
import time

import pytest

from triage.admin.dashboard.throttle import LoginThrottle, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_address_gets_its_failures_then_waits_for_the_refill() -> None:
    # Given 3 failures per 30 s for an address
    clock = Clock()
    throttle = LoginThrottle(per_address=3, overall=100, window=30, clock=clock)
    # When it fails 4 times at once, the 4th is refused for 10 s (one failure per 10 s refills)
    assert [throttle.failed("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.failed("a") == pytest.approx(10)
    # And another address is not held back by it
    assert throttle.failed("b") == 0.0
    # When refused again and again, it is not pushed further away (refusals are not counted)
    for _ in range(50):
        throttle.failed("a")
    assert throttle.failed("a") == pytest.approx(10)
    # When 10 s have passed, one more failure is counted
    clock.now += 10
    assert throttle.failed("a") == 0.0
    assert throttle.failed("a") > 0


def test_rotating_addresses_meet_the_overall_limit() -> None:
    # Given 10 failures per address and 20 overall per 60 s
    clock = Clock()
    throttle = LoginThrottle(per_address=10, overall=20, window=60, clock=clock)
    # When every failure comes from a new address
    waits = [throttle.failed(f"10.0.0.{n}") for n in range(25)]
    # Then the first 20 are counted, and the rest refused until the overall budget refills (3 s each)
    assert waits[:20] == [0.0] * 20
    assert all(wait == pytest.approx(3) for wait in waits[20:])
    clock.now += 3
    assert throttle.failed("10.0.1.1") == 0.0


def test_memory_is_bounded_and_a_failure_costs_the_same_at_60000_addresses() -> None:
    # Given a throttle that remembers 1,000 addresses, and a budget overall too large to matter
    throttle = LoginThrottle(per_address=5, overall=10**9, window=300, addresses=1000)

    def per_failure(count: int, start: int) -> float:
        began = time.perf_counter()
        for n in range(start, start + count):
            throttle.failed(f"addr-{n}")
        return (time.perf_counter() - began) / count

    # When 100, then 60,000 addresses fail once each
    few = per_failure(100, 0)
    many = per_failure(60_000, 100)
    # Then at most 1,000 are remembered, and a failure costs about what it did with few (no scan)
    assert throttle.remembered() == 1000
    assert many < max(few * 5, 50e-6), (few, many)


def test_a_forgotten_address_starts_again_but_the_overall_limit_still_holds() -> None:
    clock = Clock()
    throttle = LoginThrottle(per_address=2, overall=5, window=100, addresses=2, clock=clock)
    assert [throttle.failed("a"), throttle.failed("a")] == [0.0, 0.0]
    assert throttle.failed("a") > 0
    throttle.failed("b")
    throttle.failed("c")  # "a" is the least recently failed: forgotten
    assert throttle.failed("a") == 0.0  # counted again, as a new address
    assert throttle.failed("d") > 0  # 5 counted overall: the overall limit refuses


def test_bad_parameters_are_named_and_retry_after_is_whole_seconds() -> None:
    with pytest.raises(ValueError, match="per_address"):
        LoginThrottle(per_address=0)
    with pytest.raises(ValueError, match="window"):
        LoginThrottle(window=0)
    assert [retry_after(0.2), retry_after(1.0), retry_after(29.01)] == ["1", "1", "30"]


def test_a_refusal_waits_its_delay_but_only_so_many_wait_at_once() -> None:
    # Given an address over its limit, a refusal delay of 0.3 s and at most 2 refusals waiting
    throttle = LoginThrottle(per_address=1, overall=100, window=300, delay=0.3, most_delayed=2)

    async def timed(address: str) -> tuple[float, float]:
        began = time.perf_counter()
        wait = await throttle.refused(address)
        return wait, time.perf_counter() - began

    async def attempts() -> list[tuple[float, float]]:
        first = await timed("a")  # counted: answered at once
        return [first, *await asyncio.gather(*(timed("a") for _ in range(5)))]

    # When it sends one wrong token, then 5 at once
    answers = asyncio.run(attempts())
    # Then the first is counted at once; of the 5 refused, 2 wait the delay and 3 are answered at once
    assert answers[0][0] == 0.0
    assert answers[0][1] < 0.1
    assert all(wait > 0 for wait, _ in answers[1:])
    took = sorted(elapsed for _, elapsed in answers[1:])
    assert all(elapsed < 0.1 for elapsed in took[:3]), took
    assert all(elapsed >= 0.29 for elapsed in took[3:]), took
    # And once they are answered, a refusal waits again
    assert asyncio.run(timed("a"))[1] >= 0.29


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="delay"):
        LoginThrottle(delay=-1)
