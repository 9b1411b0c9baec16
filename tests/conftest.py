"""Test harness: a real redis-server of the suite's own, a clean database per test.

- The server is started on a free port in a temporary directory before any test
  module is imported (importing `actors` builds the broker from `REDIS_URL`).
- `TRIAGE_TEST_REDIS_URL` points the suite at an existing server instead; the suite
  refuses to run against a database that is not empty.
- `TRIAGE_*` variables of the calling shell are removed, so the suite sees defaults.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from admin.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
_server: RedisServer | None = None
_tmp: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server, _tmp
    for name in list(os.environ):
        if name.startswith("TRIAGE_") and not name.startswith("TRIAGE_TEST_"):
            del os.environ[name]
    url = os.environ.get("TRIAGE_TEST_REDIS_URL")
    if not url:
        _tmp = tempfile.mkdtemp(prefix="triage-test-redis-")
        _server = RedisServer(port=free_port(), data_dir=Path(_tmp), appendonly=False).start()
        url = _server.url
    client = redis.Redis.from_url(url)
    size = client.dbsize()
    client.close()
    if size:
        raise pytest.UsageError(f"refusing to run: the test Redis database has {size} keys; use an empty one")
    os.environ["REDIS_URL"] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


@pytest.fixture
def redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the suite's database, emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
