"""The sample processes (`omnirelay auth|worker|registry`) and the gateway's
registry polling under mTLS, between real processes, with certificates from
the harness's run-time test CA (omnirelay.harness.pki.TestCa): a client with a
certificate from the CA gets in; one from another CA, one without a
certificate and a plaintext one do not. And a registry never starts with
unauthenticated registrations unless told to, loudly (docs/security.md)."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from dataplane_support import NodeProcess, native_binary
from omnirelay.harness.pki import TestCa


@pytest.fixture(scope="module")
def pb():
    from omnirelay.samples import my_service

    return my_service.stubs()  # generation failing fails the test (no skip)


@pytest.fixture
def pki(tmp_path):
    return TestCa(tmp_path / "pki"), TestCa(tmp_path / "other-pki", name="another CA")


def tls_flags(ca: TestCa, name: str, client_cert: str = "require"):
    cert, key = ca.issue(name)
    return ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-file", str(ca.ca_cert),
            "--tls-client-cert", client_cert]


def https_get(url: str, context: ssl.SSLContext):
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return response.status, json.loads(response.read())


def poll(what: str, fn, within_s: float = 15.0):
    deadline = time.monotonic() + within_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {within_s}s (last: {last!r})")


def login(pb, address: str, credentials):
    messages, services = pb
    with grpc.secure_channel(address, credentials) as channel:
        stub = services.MyServiceAPIStub(channel)
        return stub.Login(messages.LoginRequest(username="testuser", password="testpass",
                                                session_id="s-1"), timeout=10)


def test_auth_worker_and_registry_under_mtls(tmp_path, pki, pb):
    ca, other = pki
    processes = []
    try:
        # No registry token: registrations are authenticated by the client
        # certificate the registry verifies against the CA.
        registry = NodeProcess(["registry", "--listen", "127.0.0.1:0", *tls_flags(ca, "registry")],
                               tmp_path, "registry")
        processes.append(registry)
        assert registry.ready["url"] == f"https://{registry.ready['http']}"
        auth = NodeProcess(["auth", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "users.db"),
                            "--jwt-secret-file", str(tmp_path / "jwt-secret"), "--create-secret",
                            *tls_flags(ca, "auth")], tmp_path, "auth")
        processes.append(auth)
        worker = NodeProcess(["worker", "--listen", "127.0.0.1:0", "--instance", "pod-1",
                              "--registry", registry.ready["url"], "--heartbeat-interval", "200ms",
                              *tls_flags(ca, "worker-1")], tmp_path, "worker")
        processes.append(worker)

        # The worker registered over mTLS with its own certificate.
        url = registry.ready["url"] + "/instances?role=worker"
        harness = ca.client_ssl_context("harness")
        listed = poll("pod-1 registered", lambda: [e["id"] for e in https_get(url, harness)[1]])
        assert listed == ["pod-1"]
        # The registry refuses a client without a certificate and one from
        # another CA at the handshake; plaintext gets no HTTP answer.
        no_cert = ssl.create_default_context(cafile=str(ca.ca_cert))
        for context in (no_cert, other.client_ssl_context("rogue")):
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                https_get(url, context)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://{registry.ready['http']}/instances", timeout=5).read()

        # The auth service: Login over mTLS works; the same call from another
        # CA's certificate, without a certificate or in plaintext is refused.
        reply = login(pb, auth.ready["grpc"], ca.grpc_credentials("harness"))
        assert reply.token and reply.role == "user"
        refused = [
            other.grpc_credentials("rogue"),
            grpc.ssl_channel_credentials(root_certificates=ca.ca_cert.read_bytes()),
        ]
        for credentials in refused:
            with pytest.raises(grpc.RpcError) as error:
                login(pb, auth.ready["grpc"], credentials)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(auth.ready["grpc"]) as channel:
            with pytest.raises(grpc.RpcError) as error:
                pb[1].MyServiceAPIStub(channel).Login(pb[0].LoginRequest(username="testuser"), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE

        # The worker serves MyServiceEcho over mTLS only.
        messages, services = pb
        with grpc.secure_channel(worker.ready["grpc"], ca.grpc_credentials("harness")) as channel:
            echo = services.MyServiceAPIStub(channel).MyServiceEcho(
                messages.EchoRequest(value="v"), metadata=[("session-id", "s-1")], timeout=10)
        assert echo.pod_name == "pod-1"
        with grpc.secure_channel(worker.ready["grpc"], other.grpc_credentials("rogue")) as channel:
            with pytest.raises(grpc.RpcError) as error:
                services.MyServiceAPIStub(channel).MyServiceEcho(
                    messages.EchoRequest(value="v"), metadata=[("session-id", "s-1")], timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for process in reversed(processes):
            process.stop()


def test_gateway_polls_an_https_registry_with_its_certificate(tmp_path, pki):
    ca, _ = pki
    processes = []
    try:
        registry = NodeProcess(["registry", "--listen", "127.0.0.1:0", *tls_flags(ca, "registry")],
                               tmp_path, "registry")
        processes.append(registry)
        worker = NodeProcess(["worker", "--listen", "127.0.0.1:0", "--instance", "pod-9",
                              "--registry", registry.ready["url"], *tls_flags(ca, "worker-9")],
                             tmp_path, "worker")
        processes.append(worker)
        cert, key = ca.issue("gateway")
        (tmp_path / "jwt-secret").write_text("k" * 64)
        config = tmp_path / "gateway.json"
        config.write_text(json.dumps({"omniRelay": {
            "service": "gateway",
            "admin": {"address": "127.0.0.1:0"},
            "tls": {"certFile": str(cert), "keyFile": str(key), "caFile": str(ca.ca_cert),
                    "clientCertificate": "require"},
            "gateway": {
                "address": "127.0.0.1:0",
                "jwt": {"secretFile": str(tmp_path / "jwt-secret")},
                "clusters": {"workers": {"registry": registry.ready["url"], "role": "worker",
                                         "refreshInterval": "200ms", "tls": True}},
                "routes": [{"prefix": "/my_service.MyServiceAPI/", "cluster": "workers",
                            "authorization": "required", "balancer": "sticky",
                            "stickyHeader": "session-id"}],
                "defaultRoute": {"error": "UNIMPLEMENTED"}}}}))
        gateway = NodeProcess(["serve", "--config", str(config)], tmp_path, "gateway")
        processes.append(gateway)
        harness = ca.client_ssl_context("harness")

        def members():
            _, view = https_get(f"https://{gateway.ready['admin']}/omnirelay/gateway", harness)
            return [m["id"] for m in view["clusters"]["workers"].get("members", [])]

        assert poll("the gateway to learn pod-9 over https", members) == ["pod-9"]
    finally:
        for process in reversed(processes):
            process.stop()


def test_registry_without_authentication_does_not_start(tmp_path):
    result = subprocess.run([str(native_binary()), "registry", "--listen", "127.0.0.1:0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "registrations would be unauthenticated" in result.stderr
    assert "--token-file" in result.stderr and "--insecure-allow-unauthenticated" in result.stderr
    # TLS without client certificates authenticates nobody either.
    ca = TestCa(tmp_path / "pki")
    result = subprocess.run([str(native_binary()), "registry", "--listen", "127.0.0.1:0",
                             *tls_flags(ca, "registry", client_cert="none")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "registrations would be unauthenticated" in result.stderr

    # The explicit, loudly named opt-out starts, and says so in its log.
    registry = NodeProcess(["registry", "--listen", "127.0.0.1:0", "--insecure-allow-unauthenticated"],
                           tmp_path, "open-registry")
    try:
        entry = json.dumps({"id": "w", "address": "127.0.0.1:1", "role": "worker"}).encode()
        request = urllib.request.Request(f"http://{registry.ready['http']}/register", data=entry,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert "registry.unauthenticated" in registry.log_file.read_text()
    finally:
        registry.stop()


def test_https_registry_needs_tls_on_the_worker_side(tmp_path):
    """An https:// registry URL against a plaintext registry never registers:
    the worker speaks TLS and the registry sees no registration."""
    token = tmp_path / "token"
    registry = NodeProcess(["registry", "--listen", "127.0.0.1:0", "--token-file", str(token),
                            "--create-token"], tmp_path, "registry")
    try:
        worker = NodeProcess(["worker", "--listen", "127.0.0.1:0", "--instance", "pod-x",
                              "--registry", f"https://{registry.ready['http']}",
                              "--registry-token-file", str(token), "--heartbeat-interval", "100ms"],
                             tmp_path, "worker")
        try:
            poll("the worker's failed TLS registration in its log",
                 lambda: "registry.register_failed" in worker.log_file.read_text())
            with urllib.request.urlopen(f"http://{registry.ready['http']}/instances", timeout=5) as r:
                assert json.loads(r.read()) == []
        finally:
            worker.stop()
    finally:
        registry.stop()


ECHO_NODE = """
name: tls-benchmark-target
description: one echo node; the harness runs it under mTLS
tls: mtls
defaults:
  ready: {readyFile: true, http: /readyz, timeout: 30}
nodes:
  - name: backend
    role: echo
    ports: [grpc]
    args: [echo, --instance, backend, --grpc-address, "${self.grpc}",
           --admin-address, "${self.admin}", --ready-file, "${self.ready_file}"]
"""


def test_benchmark_runs_against_an_mtls_node_and_fails_without_the_ca(tmp_path):
    from dataplane_support import echo_request
    from omnirelay.harness import Cluster
    from omnirelay.topology import Topology

    body = tmp_path / "echo.bin"
    body.write_bytes(echo_request(b"load"))
    with Cluster(Topology.from_yaml(ECHO_NODE), tmp_path / "cluster", seed=5) as cluster:
        target = cluster["backend"].address("grpc")
        cert, key = cluster.pki.issue("benchmark")

        def bench(*extra):
            result = subprocess.run(
                [str(native_binary()), "benchmark", "--procedure", "omnirelay.echo.v1.Echo/Echo",
                 "--body-file", str(body), "--requests", "40", "--concurrency", "2", "--json",
                 "--quiet", *extra], capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr[-2000:]
            return json.loads(result.stdout)

        ok = bench("--address", f"https://{target}", "--tls-ca-file", str(cluster.pki.ca_cert),
                   "--tls-cert-file", str(cert), "--tls-key-file", str(key))
        assert ok["successes"] == 40 and ok["failures"] == 0, ok
        # Without the CA (https:// = TLS against the system store): refused.
        no_ca = bench("--address", f"https://{target}")
        assert no_ca["successes"] == 0 and no_ca["status_counts"] == {"UNAVAILABLE": 40}, no_ca
        assert "certificate" in no_ca["sample_errors"]["UNAVAILABLE"]
        # The CA but no client certificate: the mTLS node refuses.
        no_cert = bench("--address", target, "--tls-ca-file", str(cluster.pki.ca_cert))
        assert no_cert["successes"] == 0, no_cert
        # A plaintext scheme together with TLS flags is a usage error.
        mixed = subprocess.run(
            [str(native_binary()), "benchmark", "--procedure", "omnirelay.echo.v1.Echo/Echo",
             "--requests", "1", "--address", f"http://{target}", "--tls-ca-file", str(cluster.pki.ca_cert)],
            capture_output=True, text=True, timeout=60)
        assert mixed.returncode != 0 and "--tls-*" in mixed.stderr
