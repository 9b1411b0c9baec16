"""Cluster suite (`make cluster`): one local 3-master Redis Cluster for the session (AOF with
fsync always, so a killed master loses nothing it acknowledged), emptied before each test.
Tests that need replicas start a 3+3 cluster of their own. Every test here is marked `cluster`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis

from triage.admin.redis_cluster import LocalCluster
from triage.broker.connection import client_from_url
from triage.testing import redis_cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath) and item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with redis_cluster(fsync="always") as started:
        yield started


@pytest.fixture
def cluster_url(cluster: LocalCluster) -> str:
    """The cluster's URL, every master emptied first."""
    for node in cluster.masters():
        with redis.Redis(host="127.0.0.1", port=node.port) as direct:
            direct.flushall()
    return cluster.url


@pytest.fixture
def cc(cluster_url: str) -> Iterator[redis.Redis]:
    """A cluster client, as Triage builds it from the URL."""
    client = client_from_url(cluster_url)
    yield client
    with contextlib.suppress(Exception):
        client.close()
