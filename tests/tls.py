"""TLS for tests: a private CA with a server and a client certificate (openssl), and redis-servers,
Sentinels and a Redis Cluster that speak TLS with them.

A server started here listens on a plain port too (its `RedisServer.port`, where the helpers check
it is up and tests arrange data); `tls_port` is where Triage reaches it, over TLS only.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tests.helpers import wait_for
from triage.admin.redis_cluster import find_redis_cli, free_cluster_ports
from triage.admin.redis_server import RedisServer, find_redis_server, free_port

HOST = "127.0.0.1"
needs_openssl = shutil.which("openssl") is not None


@dataclass(frozen=True)
class Certificates:
    """A CA (`ca`), a certificate for 127.0.0.1 and localhost signed by it (`cert`, `key`), and a
    client certificate signed by it (`client_cert`, `client_key`); all PEM files."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Triage test CA",
             "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    made = {}
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=triage-client")):
        key, request, cert = (directory / f"{name}{suffix}" for suffix in ("-key.pem", ".csr", ".pem"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key), "-out", str(request))
        _openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", "2", "-extfile", str(extensions), "-out", str(cert))  # fmt: skip
        made[name] = (cert, key)
    return Certificates(ca, *made["server"], *made["client"])


def tls_args(certs: Certificates, tls_port: int, *, auth_clients: bool = False) -> tuple[str, ...]:
    return ("--tls-port", str(tls_port), "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
            "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes" if auth_clients else "no")  # fmt: skip


class TLSServer(RedisServer):
    """A redis-server with a TLS port (`tls_port`) beside its plain one."""

    def __init__(self, certs: Certificates, data_dir: Path, *, password: str | None = None, **tls: bool) -> None:
        self.tls_port = free_port()
        super().__init__(port=free_port(), data_dir=data_dir, appendonly=False, password=password,
                         extra_args=tls_args(certs, self.tls_port, **tls))  # fmt: skip

    @property
    def url(self) -> str:
        """The plain port's URL (the password percent-encoded: it may hold any character)."""
        return f"redis://:{quote(self.password or '', safe='')}@{HOST}:{self.port}/0"

    def __enter__(self) -> TLSServer:
        self.start()
        return self

    def plain(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, password=self.password)


@contextlib.contextmanager
def tls_sentinels(
    certs: Certificates, directory: Path, primary: TLSServer, count: int = 1
) -> Iterator[list[tuple[int, int]]]:
    """Sentinels watching `primary` (service `triage`) over TLS, each with a TLS port and a plain one:
    yields their (plain, TLS) ports once each knows the primary."""
    processes, ports = [], []
    try:
        for n in range(count):
            plain, tls = free_port(), free_port()
            conf = directory / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {plain}\ntls-port {tls}\nbind {HOST}\ndir {directory}\n"
                f"tls-cert-file {certs.cert}\ntls-key-file {certs.key}\ntls-ca-cert-file {certs.ca}\n"
                "tls-auth-clients no\ntls-replication yes\n"
                f"sentinel monitor triage {HOST} {primary.tls_port} 1\n"
            )
            process = subprocess.Popen([find_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
            processes.append(process)
            ports.append((plain, tls))
        for plain, _ in ports:
            sentinel = redis.Redis(host=HOST, port=plain)
            wait_for(lambda: _ok(lambda: sentinel.sentinel_master("triage")))  # noqa: B023 (waited for here)
            sentinel.close()
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


@contextlib.contextmanager
def tls_cluster(certs: Certificates, directory: Path, masters: int = 3) -> Iterator[list[TLSServer]]:
    """A Redis Cluster of `masters` nodes whose clients, bus and replication use TLS (`--tls-cluster`)."""
    nodes: list[TLSServer] = []
    try:
        for tls_port in free_cluster_ports(masters):
            node = TLSServer(certs, directory / f"node-{tls_port}")
            node.tls_port = tls_port  # its bus listens on tls_port + 10000, free as well
            node.extra_args = (*tls_args(certs, tls_port), "--tls-cluster", "yes", "--tls-replication", "yes",
                               "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")  # fmt: skip
            nodes.append(node)
            node.start()
        create = [find_redis_cli(), "--tls", "--cacert", str(certs.ca), "--cluster", "create"]
        create += [f"{HOST}:{node.tls_port}" for node in nodes] + ["--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        for node in nodes:
            client = node.plain()
            wait_for(lambda: _ok(lambda: "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))))  # noqa: B023
            client.close()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _ok(check: Callable[[], object]) -> bool:
    """`check()`, False while the server does not answer yet."""
    try:
        return bool(check())
    except (redis.RedisError, OSError):
        return False
