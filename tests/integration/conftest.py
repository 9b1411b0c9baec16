"""Integration tests: every test starts from an empty Redis database."""

from __future__ import annotations

import pytest
import redis


@pytest.fixture(autouse=True)
def clean_database(r: redis.Redis) -> None:
    """`r` empties the suite's database; autouse makes that true for every integration test.
    The producer records a queue in the registry once a minute: after a flush, at its next send."""
    from actors import runtime  # here: importing it at the top would build the broker before REDIS_URL is set

    runtime.broker._registered.clear()
    runtime.broker._limits_published.clear()
