"""The test harness itself: it refuses a Redis database that is not empty."""

from __future__ import annotations

import subprocess
import sys

import redis

from tests.helpers import ROOT, env_with


def test_the_suite_refuses_a_non_empty_database(redis_url: str) -> None:
    # Given a database with a key in it (db 7 of the suite's server)
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.set("someone-elses-data", "precious")
    try:
        # When the suite is pointed at it
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/unit/test_settings.py"],
            cwd=ROOT,
            env=env_with(TRIAGE_TEST_REDIS_URL=url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Then it stops before any test and leaves the data alone
        assert done.returncode == 4, done.stdout + done.stderr
        assert "refusing to run: the test Redis database has 1 keys" in done.stdout + done.stderr
        assert client.get("someone-elses-data") == b"precious"
    finally:
        client.delete("someone-elses-data")
        client.close()
