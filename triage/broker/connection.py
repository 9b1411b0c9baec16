"""Redis clients from URLs: `redis://`, `rediss://`, `unix://` and `redis+sentinel://`.

Guarantees: a Sentinel URL gives a client that asks the sentinels for the current primary
and follows a failover by itself (redis-py's Sentinel connection pool): producers and
workers need no restart. Form:
`redis+sentinel://[[user]:password@]host1:26379,host2:26379/service_name[/db][?sentinel_password=…]`
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_PORT = 26379


def client_from_url(url: str, **options: object) -> redis.Redis:
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        return redis.Redis.from_url(url, **options)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = []
    for host in hostlist.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        hosts.append((name, int(port or SENTINEL_PORT)))
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
