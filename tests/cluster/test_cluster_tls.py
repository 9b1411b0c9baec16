"""A Redis Cluster over TLS (clients, bus and replication: `--tls-cluster yes`) reached through
`rediss+cluster://`, its TLS options from the URL's query or from the TRIAGE_REDIS_SSL_* variables."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Message

from tests.helpers import env_with, triage
from tests.tls import TLSServer, make_certificates, tls_cluster
from triage.broker.connection import client_from_url
from triage.runtime import build
from triage.settings import load_settings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")


@pytest.fixture(scope="module")
def tls_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[TLSServer], Path]]:
    directory = tmp_path_factory.mktemp("tls-cluster")
    certs = make_certificates(directory / "certs")
    with tls_cluster(certs, directory) as nodes:
        yield nodes, certs.ca


def test_a_tls_cluster_with_its_options_in_the_url(tls_nodes: tuple[list[TLSServer], Path]) -> None:
    # Given a TLS cluster and its CA named in the URL's query (the query used to be ignored)
    nodes, ca = tls_nodes
    url = "rediss+cluster://" + ",".join(f"127.0.0.1:{n.tls_port}" for n in nodes) + f"/?ssl_ca_certs={ca}"
    # When a client writes keys of every node's slots, Then each is read back over TLS
    client = client_from_url(url)
    keys = [f"k{i}" for i in range(30)]
    for key in keys:
        client.set(key, key)
    assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    assert all(n.plain().dbsize() for n in nodes)  # every master holds some
    client.close()


def test_a_tls_cluster_with_its_options_from_the_variables(
    tls_nodes: tuple[list[TLSServer], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a TLS cluster URL as a platform sets it, the CA in TRIAGE_REDIS_SSL_CA_CERTS
    nodes, ca = tls_nodes
    url = "rediss+cluster://" + ",".join(f"127.0.0.1:{n.tls_port}" for n in nodes[:1])
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("TRIAGE_REDIS_SSL_CA_CERTS", str(ca))
    # When a runtime built from the settings sends a message
    runtime = build(load_settings())
    try:
        message: Message[object] = Message(queue_name="critical", actor_name="a", args=(), kwargs={}, options={})
        runtime.broker.enqueue(message)
    finally:
        runtime.broker.close()
    # Then `triage stats`, over TLS too, counts it
    shown = triage("stats", "--json", env=env_with(REDIS_URL=url, TRIAGE_REDIS_SSL_CA_CERTS=str(ca)))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["queues"]["critical"]["queued"] == 1
    # And without the CA, the CLI says it cannot reach Redis, in one line
    monkeypatch.delenv("TRIAGE_REDIS_SSL_CA_CERTS")
    refused = triage("stats", env=env_with(REDIS_URL=url))
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("triage: cannot reach Redis at rediss+cluster://")
    assert "Traceback" not in refused.stderr
