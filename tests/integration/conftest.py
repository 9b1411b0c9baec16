"""Integration tests: every test starts from an empty Redis database."""

from __future__ import annotations

import pytest
import redis


@pytest.fixture(autouse=True)
def clean_database(r: redis.Redis) -> None:
    """`r` empties the suite's database; autouse makes that true for every integration test."""
