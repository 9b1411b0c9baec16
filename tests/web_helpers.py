"""A real `triage serve` process for the web tests, and a small HTTP client for it."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.helpers import BIN, ROOT, env_with, wait_for
from tests.metrics_actors import QUEUE as METRICS_QUEUE
from triage.admin.redis_server import free_port


class Server:
    def __init__(self, port: int, process: subprocess.Popen[str]) -> None:
        self.port, self.url, self.process = port, f"http://127.0.0.1:{port}", process
        self.output = ""  # what it printed, once stopped (`serving`)
        self.lines: list[str] = []  # what it has printed so far
        self._reader = threading.Thread(target=self._read, daemon=True)
        if process.stdout is not None:
            self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def stopped(self) -> None:
        """Once the process has ended: its whole output in `output`."""
        self._reader.join(10)
        self.output = "".join(self.lines)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def local_token(self) -> str:
        """The token a server started without TRIAGE_ADMIN_TOKEN minted (from its login link)."""
        found = re.search(r"/login\?token=(\S+)", "".join(self.lines))
        assert found, "no login link in the output: " + "".join(self.lines)
        return found.group(1)

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        return self.call("GET", path, token)

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http only
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


def start(**env: str) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "triage"), "serve", "--port", str(port)],
        cwd=ROOT,
        env=env_with(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(port, process)

    def up() -> bool:
        try:
            return server.get("/healthz")[0] == 200
        except OSError:
            assert process.poll() is None, "".join(server.lines)
            return False

    wait_for(up, 20)
    return server


@contextmanager
def serving(**env: str) -> Iterator[Server]:
    served = start(**env)
    try:
        yield served
    finally:
        served.process.terminate()
        served.process.wait(10)
        served.stopped()


def metrics_worker(port: int, *, processes: int = 1) -> subprocess.Popen[str]:
    """A `dramatiq` master running tests.metrics_actors (4 threads per process), its worker
    metrics on `port`; the caller terminates it."""
    args = [
        "actors",
        "tests.metrics_actors",
        "--processes",
        str(processes),
        "--threads",
        "4",
        "--queues",
        METRICS_QUEUE,
    ]
    return subprocess.Popen(
        [str(BIN / "dramatiq"), *args],
        text=True,
        cwd=ROOT,
        env=env_with(TRIAGE_METRICS_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]  # lower-case names; Set-Cookie lines joined by "\n"
    text: str


class WebClient:
    """A cookie-keeping HTTP client for the dashboard (no redirects followed). Like a browser on
    a loopback address, it keeps and sends Secure cookies over plain http."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookies: dict[str, str] = {}

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", path, data or {}, headers)

    def request(
        self, method: str, path: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = None
        if data is not None:
            body = urllib.parse.urlencode(data, doseq=True)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body, sent)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        cookies = response.headers.get_all("Set-Cookie") or []
        for line in cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "max-age=0" in line.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        answered = {name.lower(): value for name, value in response.headers.items()}
        answered["set-cookie"] = "\n".join(cookies)
        return Answer(response.status, answered, text)
