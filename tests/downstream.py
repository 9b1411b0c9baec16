"""A real HTTP server standing in for a dependency (a bank API, an SMS gateway): the test sets
its mode (healthy, failing with 500s, slow) and reads the calls it received, with their times."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # 16 worker threads connect at once
    daemon_threads = True


class Downstream:
    def __init__(self) -> None:
        self.mode = "healthy"  # healthy | failing | slow
        self.slow_s = 3.0
        self.calls: list[tuple[float, str, int]] = []  # (monotonic time of arrival, path, status; 0: slow)
        self._lock = threading.Lock()
        downstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mode = downstream.mode
                status = 500 if mode == "failing" else 200
                with downstream._lock:  # counted when it arrives
                    downstream.calls.append((time.monotonic(), self.path, status if mode != "slow" else 0))
                if mode == "slow":
                    time.sleep(downstream.slow_s)
                body = b"down" if status == 500 else b"ok"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (its timeout)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, *, since: float = 0.0, until: float = float("inf"), status: int | None = None) -> int:
        with self._lock:
            return sum(1 for t, _, s in self.calls if since <= t < until and (status is None or s == status))

    def times(self, status: int) -> list[float]:
        with self._lock:
            return [t for t, _, s in self.calls if s == status]


@contextmanager
def downstream() -> Iterator[Downstream]:
    server = Downstream()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
