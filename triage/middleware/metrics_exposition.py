"""The worker metrics' files and their exposition: one directory per `dramatiq` master, served by
one process per master.

Guarantees:
- Each master's processes write to `<tmp>/triage-metrics/<master pid>-<its start time>`, new
  for each master (a restarted group starts from zero; groups on one host never mix);
  directories of masters that are gone are removed when a worker boots (`remove_stale`).
- `serve_worker_metrics` (a Dramatiq fork of the master) merges every process's files at each
  scrape and serves them on `TRIAGE_METRICS_PORT`, bound to `TRIAGE_METRICS_HOST`.
- prometheus_client is imported only inside functions: it picks its value class when first
  imported, which in a worker must happen after PROMETHEUS_MULTIPROC_DIR is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from triage.settings import load_settings

ROOT = Path(tempfile.gettempdir()) / "triage-metrics"


def master_dir(master_pid: int) -> Path:
    """The metrics directory of the `dramatiq` master `master_pid` (its pid and start time)."""
    try:
        started = Path(f"/proc/{master_pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return ROOT / f"{master_pid}-{started}"


def remove_stale(keep: Path) -> None:
    for path in ROOT.glob("*-*"):
        pid = path.name.split("-", 1)[0]
        if path != keep and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def serve_worker_metrics() -> int:
    """The exposition process (a Dramatiq fork of the master): every process's metrics, merged."""
    # prometheus_client picks its value class when first imported: in a worker that must happen
    # after PROMETHEUS_MULTIPROC_DIR is set (after_process_boot), so it is never imported at the top.
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    settings = load_settings()
    directory = master_dir(os.getppid())
    directory.mkdir(parents=True, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0
