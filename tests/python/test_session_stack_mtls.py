"""The whole session stack under the harness's `tls: mtls` (issue 9 item 1):
every process, the gateway node and the sample processes (auth, worker-1..3,
registry), gets a certificate from the run's test CA; the gateway dials auth
and the workers over TLS with its node certificate and polls an https://
registry; workers register over https://. Real processes; a login, echo and
subscription through the gateway must work, and plaintext clients to a worker
and to the registry must be refused (the links are really TLS)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import pytest

from omnirelay.harness import Cluster
from omnirelay.samples.my_service import Client, error_of
from omnirelay.samples.session_stack import WORKERS, SessionStack, check_echo, session_topology


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    topology = session_topology(stream_interval="200ms")
    with Cluster(topology, tmp_path_factory.mktemp("mtls-stack"), seed=9, tls="mtls") as cluster:
        stack = SessionStack(cluster)
        stack.control.wait_workers(WORKERS, within_s=30.0)
        yield stack
        stack.close()


def test_sample_processes_get_certificates_and_https_registry_urls(stack):
    cluster = stack.cluster
    registry = cluster["registry"].address("http")
    for name in ("registry", "auth", *WORKERS):
        argv = cluster[name].argv
        assert argv[argv.index("--tls-client-cert") + 1] == "require", argv
        assert argv[argv.index("--tls-cert-file") + 1].endswith(f"{name}.crt"), argv
    for name in WORKERS:
        argv = cluster[name].argv
        assert argv[argv.index("--registry") + 1] == f"https://{registry}", argv
    import yaml

    gateway = yaml.safe_load(cluster["gateway"].config_file.read_text())["omniRelay"]["gateway"]
    assert gateway["clusters"]["auth"]["endpoints"] == [f"https://{cluster['auth'].address('grpc')}"]
    assert gateway["clusters"]["workers"]["registry"] == f"https://{registry}"
    assert gateway["clusters"]["workers"]["tls"] is True


def test_login_echo_and_subscribe_through_the_gateway_under_mtls(stack):
    session = stack.client().session(stack.session_id("mtls"))
    assert session.token.count(".") == 2
    reply = session.echo("over-tls")
    check_echo(reply, value="over-tls", session_id=session.session_id)
    with session.subscribe("stream", timeout_s=30.0) as subscription:
        messages = subscription.take(2)
    assert [m.index for m in messages] == [0, 1], messages
    assert {m.pod_name for m in messages} == {reply.pod_name}
    # The gateway saw the workers through the https:// registry.
    assert sorted(stack.control.gateway_views()[0]) == sorted(WORKERS)


def test_plaintext_clients_to_a_worker_auth_and_the_registry_are_refused(stack):
    cluster = stack.cluster
    for name in ("worker-1", "auth"):
        plain = Client(cluster[name].address("grpc"), timeout_s=3.0)
        try:
            call = (lambda: plain.login("testuser", "testpass", "plaintext")) if name == "auth" else (
                lambda: plain.echo("x"))
            assert error_of(call)[0] == "UNAVAILABLE"
        finally:
            plain.close()
    # TLS without a client certificate is refused too (the listeners require one).
    no_cert = Client(cluster["worker-1"].address("grpc"), timeout_s=3.0,
                     credentials=grpc.ssl_channel_credentials(cluster.pki.ca_cert.read_bytes()))
    try:
        assert error_of(no_cert.echo, "x")[0] == "UNAVAILABLE"
    finally:
        no_cert.close()
    url = f"http://{cluster['registry'].address('http')}/instances?role=worker"
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as plain_http:
        urllib.request.urlopen(url, timeout=3).read()
    assert not isinstance(plain_http.value, urllib.error.HTTPError), plain_http.value
    # The same request over TLS with the harness certificate lists the workers.
    with urllib.request.urlopen(url.replace("http://", "https://"), timeout=3,
                                context=cluster.ssl_context) as response:
        assert sorted(e["id"] for e in json.loads(response.read())) == sorted(WORKERS)
