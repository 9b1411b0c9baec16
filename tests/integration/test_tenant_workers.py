"""Tenant limits in real worker processes: the in-flight cap across 2 processes x 8 threads
(checked against a ledger kept outside Redis), and no CPU spin while every tenant is held back."""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from actors import default, runtime
from bench.run import cpu_seconds
from tests import tenant_actors as ta
from tests.helpers import dramatiq_worker, triage, wait_for
from triage.admin.processes import descendants
from triage.broker.clock import now_ms
from triage.broker.limits import tenant_view


def ledger_rows(path: Path) -> list[tuple[str, int, float, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        tenant, index, start, end = line.split()
        rows.append((tenant, int(index), float(start), float(end)))
    return rows


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_the_in_flight_cap_holds_across_two_processes_of_eight_threads(r: redis.Redis, tmp_path: Path) -> None:
    # Given a cap of 3 in flight per tenant on the default tier, and 40 messages each of A and B
    ledger = tmp_path / "ledger.txt"
    env = {"TEST_LEDGER": str(ledger), "TRIAGE_TENANT_MAX_IN_FLIGHT_DEFAULT": "3"}
    for i in range(40):
        ta.tenant_job.send_with_options(args=("A", i), tenant="A")
        ta.tenant_job.send_with_options(args=("B", i), tenant="B")
    # When 2 worker processes of 8 threads run them
    with ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(
                dramatiq_worker("actors", "tests.tenant_actors", queues=[ta.QUEUE], threads=8, **env)  # type: ignore[arg-type]
            )
        wait_for(lambda: len(ledger_rows(ledger)) == 80, timeout=60)
        listing = triage("tenants", "--json")
    rows = ledger_rows(ledger)
    # Then no tenant ever ran more than 3 at once, while the two together ran more than 3
    for tenant in ("A", "B"):
        assert max_overlap([(s, e) for t, _, s, e in rows if t == tenant]) <= 3
    assert max_overlap([(s, e) for _, _, s, e in rows]) > 3
    # And each tenant's messages ran in their order of sending... as far as 3 at once allow
    assert sorted(i for t, i, _, _ in rows if t == "A") == list(range(40))
    # And `triage tenants` reported them (throttled, nothing left)
    assert listing.returncode == 0, listing.stderr
    assert '"tenanted"' in listing.stdout


def test_no_cpu_spin_while_every_tenant_is_held_back(r: redis.Redis, tmp_path: Path) -> None:
    # Given tenant A limited to 6 messages a minute (a burst of 1), with 20 queued
    ledger = tmp_path / "ledger.txt"
    env = {"TEST_LEDGER": str(ledger), "TRIAGE_TENANT_RPM_DEFAULT": "6", "TRIAGE_TENANT_BURST_DEFAULT": "1"}
    for i in range(20):
        ta.tenant_job.send_with_options(args=("A", i), tenant="A")
    with dramatiq_worker("actors", "tests.tenant_actors", queues=[ta.QUEUE], threads=8, **env) as worker:  # type: ignore[arg-type]
        # When the first runs and A is parked for 10 s
        wait_for(lambda: len(ledger_rows(ledger)) == 1, timeout=20)
        time.sleep(0.5)
        pids = [worker.process.pid, *descendants(worker.process.pid)]
        before = cpu_seconds(pids)
        time.sleep(4)
        used = cpu_seconds(pids) - before
        # Then the worker sleeps: under 5 % of a core over 4 s, and no other message ran
        assert used / 4 < 0.05
        assert len(ledger_rows(ledger)) == 1


def run_on_two_workers(actor: Any, count: int, ledger: Path) -> list[tuple[str, int, float, float]]:
    """Send `count` messages to `actor`, run them on 2 worker processes of 8 threads, return the ledger."""
    for i in range(count):
        actor.send(actor.actor_name, i)
    with ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(
                dramatiq_worker("actors", "tests.tenant_actors", queues=[ta.QUEUE], threads=8, TEST_LEDGER=str(ledger))
            )
        wait_for(lambda: len(ledger_rows(ledger)) == count, timeout=60)
    return ledger_rows(ledger)


def test_an_actor_rate_limit_holds_across_two_processes_without_retries(r: redis.Redis, tmp_path: Path) -> None:
    # Given an actor limited to 10 runs a second
    # When 25 of its messages run on 2 worker processes of 8 threads
    starts = sorted(s for _, _, s, _ in run_on_two_workers(ta.paced_job, 25, tmp_path / "ledger.txt"))
    # Then no second saw more than 10 starts (+1: the bucket's one token at the window's edge)
    for t in starts:
        assert sum(1 for u in starts if t <= u < t + 1) <= 11
    assert starts[-1] - starts[0] >= 2.0
    # And the messages held back were deferred, not retried
    stats = runtime.queue_stats()[ta.QUEUE]
    assert stats["retries_total"] == 0
    assert stats["deferred_total"] > 0


def test_an_actor_concurrency_limit_holds_across_two_processes(r: redis.Redis, tmp_path: Path) -> None:
    # Given an actor allowed 2 runs at once
    # When 12 of its messages run on 2 worker processes of 8 threads
    rows = run_on_two_workers(ta.exclusive_job, 12, tmp_path / "ledger.txt")
    # Then never more than 2 ran at once
    assert max_overlap([(s, e) for _, _, s, e in rows]) <= 2
    assert runtime.queue_stats()[ta.QUEUE]["retries_total"] == 0


def test_a_bad_rate_limit_is_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match=r"actor 'bad_rate': rate_limit must look like '10/s'"):
        default(actor_name="bad_rate", rate_limit="fast")(lambda: None)


def test_a_kill_9_leaks_no_tenant_slot(r: redis.Redis, tmp_path: Path) -> None:
    # Given tenant A capped at 1 in flight, its first message running (10 s) on a worker, 3 more queued
    ledger = tmp_path / "ledger.txt"
    env = {"TEST_LEDGER": str(ledger), "TRIAGE_TENANT_MAX_IN_FLIGHT_DEFAULT": "1", "TRIAGE_HEARTBEAT_TIMEOUT": "2"}
    ta.slow_tenant_job.send_with_options(args=("A", 0, 10.0), tenant="A")
    for i in range(1, 4):
        ta.tenant_job.send_with_options(args=("A", i), tenant="A")
    view = runtime.broker.keys(ta.QUEUE)
    with dramatiq_worker(
        "actors",
        "tests.tenant_actors",
        queues=[ta.QUEUE],
        threads=4,
        processes=1,
        new_session=True,
        **env,
    ) as doomed:
        wait_for(lambda: _parked(r, view) == "slot", timeout=20)
        # When the worker is killed with SIGKILL mid-run (no chance to give anything back)
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(10)
    assert tenant_view(r, view, now_ms())["A"]["in_flight"] == 1
    # Then another worker's reaper takes the message back, and its slot with it: all 4 run
    with dramatiq_worker("actors", "tests.tenant_actors", queues=[ta.QUEUE], threads=4, **env):  # type: ignore[arg-type]
        wait_for(lambda: len(ledger_rows(ledger)) == 4, timeout=60)
    assert sorted(i for _, i, _, _ in ledger_rows(ledger)) == [0, 1, 2, 3]


def _parked(r: redis.Redis, keys: Any) -> str:
    row = tenant_view(r, keys, now_ms()).get("A")
    return row["parked"] if row else ""
