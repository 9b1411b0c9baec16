"""A 60 s outage of a dependency under a steady stream of 20 messages/s, through a circuit
breaker, with 2 worker processes x 8 threads: no retry storm, nothing lost, no retries burned,
a drain by itself after the recovery. Prints the counts."""

from __future__ import annotations

import redis

from tests.integration.test_breaker_workers import PROBES, THRESHOLD, outage_under_a_stream

from .harness import record_result

OUTAGE_S, RATE, RECOVERY_S = 60.0, 20.0, 10.0


def test_a_60_s_outage_under_20_messages_per_second(r: redis.Redis) -> None:
    # When the dependency fails every call for 60 s under 20 messages/s, then recovers
    run = outage_under_a_stream(r, outage_s=OUTAGE_S, rate=RATE, recovery_s=RECOVERY_S)
    expected = 20 + run.sent
    lost = expected - len(set(run.done))
    duplicated = len(run.done) - len(set(run.done))
    rounds = run.breaker["half_opened_total"]
    record_result(
        f"dependency down {OUTAGE_S:.0f} s under {RATE:.0f} msg/s, breaker (threshold {THRESHOLD}, "
        f"recovery {RECOVERY_S:.0f} s, {PROBES} probes)",
        lost,
        duplicated,
        f"drained {run.drained_s:.1f} s after recovery",
        f"{run.sent} sent; calls during outage {run.calls_in_outage} (failures {run.failed_calls}, of which "
        f"{run.calls_after_opening} > 1 s after opening; probe rounds {rounds}); retries {run.queue['retries_total']}; "
        f"deferrals {run.queue['deferred_total']}; dead letters {run.queue['dead_letters_total']}",
    )
    # Then nothing was lost, nothing dead-lettered, and the dependency saw the probes only once open
    assert lost == 0
    assert run.queue["dead_letters_total"] == 0
    assert run.calls_after_opening <= PROBES * rounds
    assert run.queue["retries_total"] <= THRESHOLD - 1
    assert run.breaker["state"] == "closed"
