"""Payload guard on the real broker: nothing reaches Redis; 10 MiB round-trips through a worker."""

from __future__ import annotations

import decimal
import hashlib

import pytest
import redis

from tests import worker_actors
from tests.helpers import dramatiq_worker, wait_for
from triage.middleware import PayloadTooLarge

MIB = 1024 * 1024


def test_non_native_argument_writes_nothing(r: redis.Redis) -> None:
    with pytest.raises(TypeError, match=r"actor 'digest': argument 'blob' is a Decimal"):
        worker_actors.digest.send(decimal.Decimal("1"))  # type: ignore[arg-type]
    assert r.dbsize() == 0


def test_oversized_message_writes_nothing(r: redis.Redis) -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 10485760 bytes"):
        worker_actors.digest.send("x" * (10 * MIB))
    assert r.dbsize() == 0


def test_ten_mib_message_round_trips_through_a_real_worker(r: redis.Redis) -> None:
    # Given a message just under the 10 MiB limit
    blob = "é" * ((10 * MIB - 1024) // 2)
    message = worker_actors.digest.send(blob)
    assert len(message.encode()) > 10 * MIB - 2048
    # When a real worker processes it
    with dramatiq_worker("actors", "tests.worker_actors", queues=["default"]):
        wait_for(lambda: r.llen(worker_actors.DONE) == 1, timeout=60)
    # Then the actor received exactly what was sent
    expected = f"digest:{len(blob)}:{hashlib.sha256(blob.encode()).hexdigest()}"
    assert r.lrange(worker_actors.DONE, 0, -1) == [expected.encode()]
