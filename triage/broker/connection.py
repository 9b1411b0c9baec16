"""Redis clients from URLs: `redis://`, `rediss://`, `unix://`, `redis+sentinel://` and
`redis+cluster://` (`rediss+cluster://` with TLS).

Guarantees:
- A Sentinel URL gives a client that asks the sentinels for the current primary and follows
  a failover by itself (redis-py's Sentinel connection pool): producers and workers need no
  restart. Form:
  `redis+sentinel://[[user]:password@]host1:26379,host2:26379/service_name[/db][?sentinel_password=…]`
- A Cluster URL gives redis-py's cluster client, which learns the slot map from any of the
  nodes named and follows MOVED/ASK redirections and failovers by itself. Form:
  `redis+cluster://[[user]:password@]host1:7000,host2:7001[/]` (Redis Cluster has database 0
  only: a path naming another is refused). `is_cluster(client)` tells the two kinds apart.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

SENTINEL_PORT = 26379
CLUSTER_PORT = 6379
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (and its pipelines)."""
    return isinstance(client, RedisCluster)


def _hosts(hostlist: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for host in hostlist.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        hosts.append((name, int(port or default_port)))
    return hosts


def client_from_url(url: str, **options: object) -> redis.Redis:
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return cluster_from_url(url, **options)
    if parts.scheme != "redis+sentinel":
        return redis.Redis.from_url(url, **options)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = _hosts(hostlist, SENTINEL_PORT)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel URL needs the service name as its path: redis+sentinel://h:26379/mymaster")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs = {"password": query["sentinel_password"][0]} if "sentinel_password" in query else {}
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, socket_timeout=1.0)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        **options,
    )
    return client


def cluster_from_url(url: str, **options: object) -> redis.Redis:
    """The cluster client of a `redis+cluster://` or `rediss+cluster://` URL.

    Typed as `redis.Redis`: the cluster client answers the same commands for keys of one slot,
    which is all Triage sends it (`triage.broker.slots` checks the keys)."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    if not hostlist:
        raise ValueError("a redis+cluster URL needs at least one node: redis+cluster://host1:7000,host2:7001/")
    path = [p for p in parts.path.split("/") if p]
    if path and path != ["0"]:
        raise ValueError(f"Redis Cluster has database 0 only; the URL names database {path[0]!r}")
    nodes = [ClusterNode(host, port) for host, port in _hosts(hostlist, CLUSTER_PORT)]  # type: ignore[no-untyped-call]
    cluster = RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=CLUSTER_SCHEMES[parts.scheme],
        **options,  # type: ignore[arg-type]
    )
    return cast(redis.Redis, cluster)
