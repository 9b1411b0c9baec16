"""Redis over TLS as the platforms sell it, against real TLS redis-servers (certificates made with
openssl): Heroku's self-signed server reached with environment variables only, by the Procfile's
worker line, a producer and the CLI; a CA-verified server; client certificates; Sentinel over TLS.
And URL schemes of any case, against the suite's own server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Message

from tests.helpers import ROOT, Worker, env_with, triage, wait_for
from tests.integration.test_deploy_manifests import procfile
from tests.tls import Certificates, TLSServer, make_certificates, tls_sentinels
from triage.runtime import build
from triage.settings import load_settings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")

PASSWORD = "t-P@ss/w0rd"  # a raw '@' and '/': read and redacted whole


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def heroku(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """A TLS Redis with a password, as Heroku Redis serves it (its certificate is not one a client trusts)."""
    with TLSServer(certs, tmp_path_factory.mktemp("heroku"), password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def mutual(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """A TLS Redis that requires a client certificate signed by its CA."""
    with TLSServer(certs, tmp_path_factory.mktemp("mutual"), auth_clients=True) as server:
        yield server


def stats(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return triage("stats", "--json", env=env_with(**env), timeout=30)


def test_heroku_style_tls_with_environment_variables_only(heroku: TLSServer) -> None:
    # Given REDIS_URL as the platform sets it (rediss://, self-signed) and the variables app.json
    # sets (TRIAGE_REDIS_SSL_CERT_REQS=none among them): what a Heroku deploy has, and nothing more
    heroku.plain().flushall()
    manifest = json.loads((ROOT / "app.json").read_text())["env"]
    env = {name: spec["value"] for name, spec in manifest.items() if "value" in spec}
    assert env["TRIAGE_REDIS_SSL_CERT_REQS"] == "none"
    env["REDIS_URL"] = f"rediss://:{PASSWORD}@127.0.0.1:{heroku.tls_port}"
    # When the Procfile's critical worker line runs as it is
    line = procfile()["worker_critical"]
    worker = Worker(
        subprocess.Popen(
            ["bash", "-c", line],
            cwd=ROOT,
            env=env_with(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    try:
        worker.wait_ready()
        # And a producer process sends it a message
        send = "from actors.inventory import reserve_stock; reserve_stock.send('o-1', 'sku-1', 2)"
        producer = [sys.executable, "-c", send]
        sent = subprocess.run(producer, cwd=ROOT, env=env_with(**env), capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr

        # Then the worker runs it, as `triage stats` (over TLS too) shows
        def acked() -> bool:
            shown = stats(env)
            assert shown.returncode == 0, shown.stderr
            return bool(json.loads(shown.stdout)["queues"]["critical"]["acked_total"] >= 1)

        wait_for(acked, timeout=30, interval=0.2)
    finally:
        assert worker.stop() == 0
    log = "".join(worker.log)
    assert "Traceback" not in log
    assert "P@ss" not in log


def test_a_ca_verified_server_needs_the_ca_and_says_so_without_a_traceback(
    heroku: TLSServer, certs: Certificates
) -> None:
    # Given the server's CA in TRIAGE_REDIS_SSL_CA_CERTS and certificates required
    url = f"rediss://:{PASSWORD}@127.0.0.1:{heroku.tls_port}/0"
    verified = {"REDIS_URL": url, "TRIAGE_REDIS_SSL_CERT_REQS": "required", "TRIAGE_REDIS_SSL_CA_CERTS": str(certs.ca)}
    # Then `triage stats` reaches it
    shown = stats(verified)
    assert shown.returncode == 0, shown.stderr
    # And the same with the options in the URL's query
    query = f"{url}?ssl_cert_reqs=required&ssl_ca_certs={certs.ca}"
    assert stats({"REDIS_URL": query}).returncode == 0
    # But without the CA (certificates are required by default), one line says why, with no password
    refused = stats({"REDIS_URL": url})
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"triage: cannot reach Redis at rediss://:***@127.0.0.1:{heroku.tls_port}/0: ")
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "P@ss" not in refused.stderr
    # And the URL's query wins over the variable: required there, though the variable says none
    strict = stats({"REDIS_URL": f"{url}?ssl_cert_reqs=required", "TRIAGE_REDIS_SSL_CERT_REQS": "none"})
    assert strict.returncode == 1


def test_client_certificates_from_the_variables_or_the_query(mutual: TLSServer, certs: Certificates) -> None:
    # Given a server that requires a client certificate signed by its CA
    url = f"rediss://127.0.0.1:{mutual.tls_port}/0"
    ca = {"REDIS_URL": url, "TRIAGE_REDIS_SSL_CA_CERTS": str(certs.ca)}
    # When no client certificate is given, Then the CLI says it cannot reach Redis, in one line
    refused = stats(ca)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    # When the certificate and its key come from the variables, Then it answers
    pair = {"TRIAGE_REDIS_SSL_CERTFILE": str(certs.client_cert), "TRIAGE_REDIS_SSL_KEYFILE": str(certs.client_key)}
    assert stats({**ca, **pair}).returncode == 0
    # And from the URL's query, for a process built in place
    query = f"{url}?ssl_ca_certs={certs.ca}&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}"
    assert load_settings(redis_url=query).redis_client().ping()


def test_sentinel_over_tls_to_the_sentinels_and_the_primary(
    mutual: TLSServer, certs: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a primary that speaks TLS only to holders of a client certificate, watched by a sentinel over TLS
    mutual.plain().flushall()
    with tls_sentinels(certs, tmp_path, mutual) as [(plain_port, tls_port)]:
        # And the TLS options in the variables, a rediss+sentinel URL naming the sentinel's TLS port
        monkeypatch.setenv("REDIS_URL", f"rediss+sentinel://127.0.0.1:{tls_port}/triage/0")
        monkeypatch.setenv("TRIAGE_REDIS_SSL_CA_CERTS", str(certs.ca))
        monkeypatch.setenv("TRIAGE_REDIS_SSL_CERTFILE", str(certs.client_cert))
        monkeypatch.setenv("TRIAGE_REDIS_SSL_KEYFILE", str(certs.client_key))
        # When a runtime is built from the settings and sends a message
        runtime = build(load_settings())
        try:
            message: Message[object] = Message(
                queue_name="critical", actor_name="reserve_stock", args=("o-1", "s", 1), kwargs={}, options={}
            )
            runtime.broker.enqueue(message)
        finally:
            runtime.broker.close()
        # Then the primary holds it
        assert any(b"critical" in key for key in mutual.plain().keys("*"))
        # And with sentinel_ssl=false the sentinel's plain port serves, the primary still over TLS
        monkeypatch.setenv("REDIS_URL", f"rediss+sentinel://127.0.0.1:{plain_port}/triage/0?sentinel_ssl=false")
        assert load_settings().redis_client().ping()


@pytest.mark.parametrize("scheme", ["REDIS", "Redis"])
def test_a_scheme_in_capitals_works_against_a_real_server(redis_url: str, scheme: str) -> None:
    # Given the suite's server, its URL's scheme in capitals
    url = scheme + redis_url.removeprefix("redis")
    # When `triage stats` runs, Then it answers
    shown = stats({"REDIS_URL": url})
    assert shown.returncode == 0, shown.stderr
    assert "critical" in json.loads(shown.stdout)["queues"]


def test_an_unknown_scheme_is_one_line_naming_the_variable() -> None:
    shown = stats({"REDIS_URL": "redis+foo://:t-P@ss@127.0.0.1:1/0"})
    assert shown.returncode == 2
    assert shown.stderr.startswith("triage: invalid configuration:\n  REDIS_URL: must start with one of redis://")
    assert "Traceback" not in shown.stderr
    assert "P@ss" not in shown.stderr
