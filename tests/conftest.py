"""Test harness: a real redis-server of the suite's own, a clean database per test.

- The server is started on a free port in a temporary directory (`triage.testing`)
  before any test module is imported (importing `actors` builds the broker from `REDIS_URL`).
- `TRIAGE_TEST_REDIS_URL` points the suite at an existing server instead; the suite
  refuses to run against a database that is not empty.
- `TRIAGE_*` variables of the calling shell are removed, so the suite sees defaults.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import redis

from triage.testing import redis_server

_servers = contextlib.ExitStack()
# Until pytest_configure starts the suite's server, REDIS_URL points where nothing listens: a
# module that builds the broker too early (at conftest import) fails loudly instead of quietly
# using the Redis of the machine or of the calling shell.
os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"


def pytest_configure(config: pytest.Config) -> None:
    for name in list(os.environ):
        if name.startswith("TRIAGE_") and not name.startswith("TRIAGE_TEST_"):
            del os.environ[name]
    url = os.environ.get("TRIAGE_TEST_REDIS_URL") or _servers.enter_context(redis_server()).url
    client = redis.Redis.from_url(url)
    size = client.dbsize()
    client.close()
    if size:
        raise pytest.UsageError(f"refusing to run: the test Redis database has {size} keys; use an empty one")
    os.environ["REDIS_URL"] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    _servers.close()


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
