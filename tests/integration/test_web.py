"""The web process (`triage serve`), started as a real process: fleet metrics with values after
real work, health, the admin API's token, and no message argument in what it serves."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from actors import critical, runtime
from tests.helpers import BIN, ROOT, dramatiq_worker, env_with, wait_for
from tests.metrics_actors import QUEUE as METRICS_QUEUE
from tests.metrics_actors import metered_fail, metered_flaky, metered_ok
from tests.web_helpers import Server, metrics_worker, serving
from triage.admin.redis_server import free_port

TOKEN = "s3cret-admin-token-for-tests"
CANARY = "canary-4f1c2a-never-in-metrics"


@critical(queue="t_web")
def t_web_job(secret: str) -> None: ...


@pytest.fixture
def server(r: redis.Redis) -> Iterator[Server]:
    with serving(TRIAGE_ADMIN_TOKEN=TOKEN) as served:
        yield served


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_show_the_fleet_after_real_work(server: Server) -> None:
    # Given 3 messages carrying a secret run by a real worker, then 2 more sent to the paused queue
    for _ in range(3):
        t_web_job.send(CANARY)
    with dramatiq_worker("actors", "tests.integration.test_web", queues=["t_web"]):
        wait_for(lambda: runtime.queue_stats()["t_web"]["acked_total"] == 3, 20)
        runtime.broker.pause("t_web")
        for _ in range(2):
            t_web_job.send(CANARY)
        # When Prometheus scrapes the web process
        status, page = server.get("/metrics", token=TOKEN)
        # (with an admin token configured, /metrics needs it too)
        assert server.get("/metrics")[0] == 401
    # Then the queue's figures are there, with values, and the secret is not
    assert status == 200
    assert CANARY not in page
    values = samples(page)
    queue = (("queue", "t_web"), ("tier", "critical"))
    assert values[("triage_queue_acked_total", queue)] == 3
    assert values[("triage_queue_messages", (("queue", "t_web"), ("state", "queued"), ("tier", "critical")))] == 2
    assert values[("triage_queue_enqueued_total", queue)] == 5
    assert values[("triage_queue_paused", queue)] == 1
    assert values[("triage_queue_sla_seconds", queue)] == 2.0
    assert values[("triage_queue_workers", queue)] == 1  # the worker was live at the scrape
    assert values[("triage_redis_up", ())] == 1


def test_health_and_readiness(server: Server) -> None:
    assert server.get("/healthz") == (200, '{"status":"ok"}')
    status, body = server.get("/readyz")
    assert (status, json.loads(body)["redis"]) == (200, "ok")


def test_the_admin_api_needs_the_token(server: Server) -> None:
    # Without a token: 401; with a wrong one: 403; with the right one: the stats
    assert server.get("/api/v1/admin/queue/stats")[0] == 401
    assert server.get("/api/v1/admin/queue/stats", token="wrong-token-of-some-length")[0] == 403
    status, body = server.get("/api/v1/admin/queue/stats", token=TOKEN)
    assert status == 200
    critical_row: dict[str, Any] = json.loads(body)["queues"]["critical"]
    assert (critical_row["tier"], critical_row["sla_seconds"], critical_row["sla_met"]) == ("critical", 2.0, True)


def test_without_a_token_it_serves_loopback_only(r: redis.Redis) -> None:
    # When the web process is asked to listen on every address with no admin token
    done = subprocess.run(
        [str(BIN / "triage"), "serve", "--host", "0.0.0.0", "--port", str(free_port())],  # noqa: S104
        cwd=ROOT,
        env=env_with(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then it refuses, naming the variable
    assert done.returncode == 2
    assert "TRIAGE_ADMIN_TOKEN" in done.stderr


def test_stats_watch_shows_depth_and_marks_a_queue_late(r: redis.Redis) -> None:
    # Given 2 critical messages that have waited longer than a 0.1 s SLA
    runtime.broker.declare_queue("t_web")
    for _ in range(2):
        t_web_job.send("x")
    time.sleep(0.3)
    # When an operator watches the stats for two refreshes
    done = subprocess.run(
        [str(BIN / "triage"), "stats", "--watch", "--iterations", "2"],
        cwd=ROOT,
        env=env_with(TRIAGE_TIERS__CRITICAL__SLA_SECONDS="0.1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then two views were printed, and the queue shows its depth and is marked late
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("queue ") == 2
    row = [line for line in done.stdout.splitlines() if line.startswith("t_web")][-1]
    assert row.split()[2] == "2"
    assert row.endswith("LATE")


def test_two_worker_processes_expose_merged_metrics_with_values(r: redis.Redis) -> None:
    # Given 20 messages that succeed, 5 that fail (no retries) and 3 that succeed on their
    # retry, run by 2 worker processes of one dramatiq master with worker metrics on a port
    port = free_port()
    for n in range(20):
        metered_ok.send(n)
    for n in range(5):
        metered_fail.send(n)
    for n in range(3):
        metered_flaky.send(n)
    worker = metrics_worker(port, processes=2)
    try:
        wait_for(lambda: runtime.queue_stats()[METRICS_QUEUE]["acked_total"] == 23, 60)
        wait_for(lambda: runtime.queue_stats()[METRICS_QUEUE]["dead_letters_total"] == 5, 60)
        # When the worker's port is scraped
        metrics = Server(port, worker)

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            try:
                return samples(metrics.get("/metrics")[1])
            except OSError:
                return {}

        labels = (("queue", METRICS_QUEUE), ("tier", "default"))
        expected = {
            _total_key("metered_ok", "done"): 20,
            _total_key("metered_fail", "dead"): 5,
            _total_key("metered_flaky", "retried"): 3,
            _total_key("metered_flaky", "done"): 3,
            ("triage_message_run_seconds_count", labels): 31,  # 25 runs, 3 retried, 3 retries
            ("triage_message_wait_seconds_count", labels): 28,  # first runs only: not the retries
            ("triage_messages_in_progress", labels): 0,
            ("triage_worker_threads", ()): 8,
        }
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        def all_flushed() -> bool:  # each process adds its tallies once a second
            values.update(scraped())
            return all(values.get(key) == value for key, value in expected.items())

        wait_for(all_flushed, 30)
    finally:
        worker.terminate()
        worker.wait(30)
    # Then the two processes' counts are merged: 23 done, 5 dead, 3 retried, each run timed once
    assert {key: values[key] for key in expected} == expected
    # And the last hour in Redis has the same figures (written by both processes, in batches)
    row = runtime.queue_stats()[METRICS_QUEUE]
    hour = [row[k] for k in ("succeeded_last_hour", "failed_last_hour", "dead_lettered_last_hour", "retried_last_hour")]
    assert hour == [23, 5, 5, 3]
    assert 0.005 <= row["avg_run_seconds_last_hour"] < 0.5  # 20 runs of at least 10 ms, 11 that take none
    assert row["avg_wait_seconds_last_hour"] > 0


def _total_key(actor: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = (("actor", actor), ("outcome", outcome), ("queue", METRICS_QUEUE), ("tier", "default"))
    return ("triage_messages_total", labels)
