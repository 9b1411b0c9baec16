"""A real Prometheus server (the Debian package) scrapes the web process and a worker group's
metrics port; PromQL sees the queue's depth from the fleet metrics and the runs from the worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from actors import runtime
from tests.helpers import wait_for
from tests.metrics_actors import QUEUE, metered_ok
from tests.web_helpers import metrics_worker, serving
from triage.admin.redis_server import free_port

# Skipped only where the package cannot be installed; CI installs it (make tools), so there it must run.
pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None and not os.environ.get("CI"),
    reason="prometheus is not installed (make tools installs it with apt)",
)


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> list[dict[str, object]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - http://127.0.0.1 only
            answer = json.load(response)
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]


@pytest.fixture
def prometheus_for() -> Iterator[Callable[..., Prometheus]]:
    """Starts a `prometheus` server scraping the given targets (job -> port) every second, with
    the bearer token `tokens` names for a job, if any."""
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="triage-prometheus-") as directory:

        def start(targets: dict[str, int], tokens: dict[str, str] | None = None) -> Prometheus:
            port = free_port()
            jobs = "".join(
                f"  - job_name: {job}\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
                + (f"    authorization: {{credentials: '{(tokens or {})[job]}'}}\n" if job in (tokens or {}) else "")
                for job, target in targets.items()
            )
            config = Path(directory) / "prometheus.yml"
            config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{jobs}")
            process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory}/data",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            server = Prometheus(port)

            def ready() -> bool:
                try:
                    with urllib.request.urlopen(server.url + "/-/ready", timeout=2) as response:  # noqa: S310
                        return bool(response.status == 200)
                except OSError:
                    assert process.poll() is None, "prometheus exited"
                    return False

            wait_for(ready, 30)
            return server

        yield start
        for process in processes:
            process.terminate()
            process.wait(10)


def test_a_prometheus_server_sees_the_depth_and_the_runs(
    r: redis.Redis, prometheus_for: Callable[..., Prometheus]
) -> None:
    # Given 30 messages run by a worker group with metrics on a port, then 7 more left queued
    # (the queue paused), and the web process
    metrics_port = free_port()
    for n in range(30):
        metered_ok.send(n)
    worker = metrics_worker(metrics_port)
    try:
        wait_for(lambda: runtime.queue_stats()[QUEUE]["acked_total"] == 30, 60)
        runtime.broker.pause(QUEUE)
        for n in range(7):
            metered_ok.send(n)
        with serving() as web:
            # When a real Prometheus scrapes both every second
            targets = {"triage-web": web.port, "triage-worker": metrics_port}
            prometheus = prometheus_for(targets, {"triage-web": web.local_token})
            depth = f'triage_queue_messages{{job="triage-web",queue="{QUEUE}",state="queued"}}'
            runs = f'sum(triage_messages_total{{job="triage-worker",queue="{QUEUE}",outcome="done"}})'
            wait_for(lambda: prometheus.value(depth) == 7 and prometheus.value(runs) == 30, 60, interval=0.5)
            # Then PromQL reads the depth from the fleet metrics and the runs from the worker,
            # and the tier's SLA and the live worker are there to compare against
            assert prometheus.value(depth) == 7
            assert prometheus.value(runs) == 30
            assert prometheus.value(f'triage_queue_sla_seconds{{queue="{QUEUE}"}}') == 10.0
            assert prometheus.value(f'triage_queue_workers{{queue="{QUEUE}"}}') == 1
            assert prometheus.value('up{job="triage-worker"}') == 1
    finally:
        worker.terminate()
        worker.wait(30)
