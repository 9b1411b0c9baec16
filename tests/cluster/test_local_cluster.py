"""The local Redis Cluster harness itself (`triage.admin.redis_cluster`, `triage.testing.redis_cluster`):
it forms, spreads keys over its masters, survives a failover and a killed master without losing
what was written, and leaves no process behind."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from triage.admin.redis_cluster import BUS_OFFSET, free_cluster_ports
from triage.admin.redis_server import RedisServer, answers
from triage.testing import redis_cluster

TAGS = ("a", "b", "c")  # hash tags whose slots (15495, 3300, 7365) fall to three different masters


def cluster_client(port: int) -> RedisCluster:
    return RedisCluster(host="127.0.0.1", port=port, decode_responses=True)


def replication(node: RedisServer) -> dict[str, Any]:
    """INFO replication of that node alone."""
    with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as client:
        info: dict[str, Any] = client.info("replication")
        return info


def test_free_cluster_ports_leave_room_for_the_cluster_bus() -> None:
    # When ports for a 12-node cluster are asked for
    ports = free_cluster_ports(12)
    # Then they are distinct, each bus port is a valid port, and no bus port is another node's port
    assert len(set(ports)) == 12
    assert all(port + BUS_OFFSET <= 65535 for port in ports)
    assert not {port + BUS_OFFSET for port in ports} & set(ports)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_three_master_cluster_serves_keys_from_more_than_one_master() -> None:
    # Given a cluster of 3 masters
    with redis_cluster() as cluster:
        masters = cluster.masters()
        assert [n.port for n in masters] == [n.port for n in cluster.nodes]
        assert not cluster.replicas()
        assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in masters) + "/"
        # When keys with different hash tags are written and read through a cluster client
        with cluster_client(masters[0].port) as client:
            for tag in TAGS:
                assert client.set(f"{{{tag}}}key", tag)
            assert [client.get(f"{{{tag}}}key") for tag in TAGS] == list(TAGS)
        # Then they sit on more than one master, each on the node that node_for_key names
        owners = {tag: cluster.node_for_key(f"{{{tag}}}key") for tag in TAGS}
        assert len({node.port for node in owners.values()}) > 1
        for tag, node in owners.items():
            with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) as direct:
                assert direct.get(f"{{{tag}}}key") == tag
    # And when the block ends, no node is left running
    assert all(node.process is None and not answers(node.url) for node in cluster.nodes)


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_failover_makes_the_replica_master_and_keeps_the_data() -> None:
    # Given 3 masters with a replica each, and a key written through a cluster client
    with redis_cluster(replicas=1) as cluster:
        assert (len(cluster.masters()), len(cluster.replicas())) == (3, 3)
        with cluster_client(cluster.nodes[0].port) as client:
            assert client.set("{a}key", "before")
        master = cluster.node_for_key("{a}key")
        (replica,) = [n for n in cluster.replicas() if replication(n)["master_port"] == master.port]
        # When that replica takes over its master's slots
        cluster.failover(replica)
        # Then it is a master serving the key, its old master follows it, and the key is still there
        assert replica in cluster.masters()
        assert master in cluster.replicas()
        assert cluster.node_for_key("{a}key") is replica
        assert replication(master)["master_port"] == replica.port
        with cluster_client(master.port) as client:
            assert client.get("{a}key") == "before"


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_killed_master_comes_back_with_its_data_from_the_aof() -> None:
    # Given 3 masters with appendonly and appendfsync always, and a key written
    with redis_cluster(fsync="always") as cluster:
        with cluster_client(cluster.nodes[0].port) as client:
            assert client.set("{a}key", "kept")
        master = cluster.node_for_key("{a}key")
        assert master.process is not None
        pid = master.process.pid
        # When the master serving it is killed with SIGKILL and restarted
        cluster.restart(master, kill=True)
        # Then a new process serves the same slots on the same port, with the key
        assert master.process is not None
        assert master.process.pid != pid
        assert cluster.node_for_key("{a}key") is master
        with cluster_client(cluster.nodes[0].port) as client:
            assert client.get("{a}key") == "kept"
