"""Security end to end between real processes (docs/security.md): a topology
under mTLS from one run-time test CA, verified identities bound by the
principal middleware across a relay, the closed admin control plane, the
authenticated instance registry, https:// that is TLS or a config error, and a
JWT secret file that must exist unless creation is asked for."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from dataplane_support import NodeProcess, echo_request, http_request, native_binary, parse_echo_response
from omnirelay.harness import Cluster
from omnirelay.harness.pki import TestCa
from omnirelay.topology import Topology

REPO = Path(__file__).resolve().parents[2]
ECHO = "/omnirelay.echo.v1.Echo"

RELAY_TOPOLOGY = """
name: mtls-relay
description: a relay forwarding echo calls to a backend through a fault proxy
tls: mtls
defaults:
  ready: {readyFile: true, http: /readyz, timeout: 30}
nodes:
  - name: backend
    role: echo
    ports: [grpc]
    args: [echo, --instance, backend, --grpc-address, "${self.grpc}",
           --admin-address, "${self.admin}", --ready-file, "${self.ready_file}"]
  - name: relay
    role: relay
    ports: [grpc]
    config:
      omniRelay:
        service: relay
        inbounds: {grpc: {address: "${self.grpc}"}}
        outbounds:
          echo: {transport: grpc, endpoints: ["${nodes.backend.grpc}"]}
        routes: [{prefix: "/omnirelay.echo.v1.Echo/", outbound: echo}]
  - name: edge
    role: gateway
    ports: [grpc]
    config:
      omniRelay:
        service: edge
        gateway:
          address: "${self.grpc}"
          clusters: {echo: {endpoints: ["${nodes.backend.grpc}"]}}
          routes: [{prefix: "/omnirelay.echo.v1.Echo/", cluster: echo}]
links:
  - {from: relay, to: backend, port: grpc, proxy: true}
  - {from: edge, to: backend, port: grpc}
"""


def identity(x):
    return x


def echo(channel, metadata=()):
    """One Echo call; (payload, the principal the serving node bound)."""
    call = channel.unary_unary(f"{ECHO}/Echo", request_serializer=identity,
                               response_deserializer=identity)
    body, info = call.with_call(echo_request(b"hi"), metadata=list(metadata), timeout=10)
    return parse_echo_response(body)["payload"], dict(info.initial_metadata()).get("x-omnirelay-principal")


@pytest.fixture
def mtls(tmp_path):
    topology = Topology.from_yaml(RELAY_TOPOLOGY)
    with Cluster(topology, tmp_path / "mtls", seed=3) as cluster:
        yield cluster


def test_every_node_of_an_mtls_topology_verifies_its_peers(mtls):
    backend, relay = mtls["backend"], mtls["relay"]
    # The harness gave each node a certificate from one run-time CA and
    # required client certificates everywhere.
    config = backend.introspect()["config"]["omniRelay"]
    assert config["tls"]["clientCertificate"] == "require"
    assert config["tls"]["caFile"] == str(mtls.pki.ca_cert)
    relay_endpoints = relay.introspect()["config"]["omniRelay"]["outbounds"]["echo"]["endpoints"]
    assert relay_endpoints[0].startswith("https://")

    # Direct: the backend binds the harness's verified certificate; a forged
    # identity header from an untrusted peer is ignored.
    with backend.grpc_channel() as channel:
        payload, principal = echo(channel, [("x-client-principal", "admin")])
    assert payload == b"hi" and principal == "spiffe://omnirelay/harness"

    # Through the relay (and its fault proxy): the relay dials the backend
    # over mTLS with its own certificate, so the backend sees the relay.
    with relay.grpc_channel() as channel:
        payload, principal = echo(channel, [("x-client-principal", "admin")])
    assert payload == b"hi" and principal == "spiffe://omnirelay/relay"

    # Through the gateway listener: it serves mTLS and dials its cluster's
    # https:// members with its own certificate.
    with mtls["edge"].grpc_channel() as channel:
        payload, principal = echo(channel)
    assert payload == b"hi" and principal == "spiffe://omnirelay/edge"

    # A plaintext client does not get in, and neither does a TLS client
    # without a certificate.
    with grpc.insecure_channel(backend.address("grpc")) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            echo(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    anonymous = grpc.ssl_channel_credentials(root_certificates=mtls.pki.ca_cert.read_bytes())
    with grpc.secure_channel(backend.address("grpc"), anonymous) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            echo(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_admin_over_mtls_needs_a_client_certificate(mtls):
    backend = mtls["backend"]
    assert backend.admin_url.startswith("https://")
    status, _ = backend.get("/metrics")
    assert status == 200
    no_cert = ssl.create_default_context(cafile=str(mtls.pki.ca_cert))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(backend.admin_url + "/healthz", timeout=5, context=no_cert).read()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{backend.admin}/healthz", timeout=5).read()
    # The verified client certificate is a control-plane credential: no
    # token needed (404: this node has no rate limiter; not 401/403).
    status, _ = backend.get("/omnirelay/control/lease-health")
    assert status == 200
    context = mtls.pki.client_ssl_context("operator")
    request = urllib.request.Request(backend.admin_url + "/omnirelay/control/backpressure?mode=normal",
                                     data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=5, context=context)
    assert answer.value.code == 404


def test_an_existing_multi_node_harness_test_passes_under_mtls(tmp_path):
    """The three-node harness tests (readiness probes, admin links through
    fault proxies, partitions) unchanged, with OMNIRELAY_TLS=mtls."""
    env = dict(__import__("os").environ, OMNIRELAY_TLS="mtls")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/python/test_harness.py::test_three_node_starts_ready_with_endpoints_and_artifacts",
         "tests/python/test_harness.py::test_partition_between_explicit_groups",
         "--basetemp", str(tmp_path / "inner")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
    # And it really ran under mTLS: the nodes' configs carry the test CA.
    argv = json.loads(next((tmp_path / "inner").rglob("nodes/node-1/argv.json")).read_text())
    assert any(a.startswith("tls.clientCertificate=require") for a in argv)


# -- closed control plane, registry, secrets, https:// -------------------------------------


def test_control_endpoints_are_closed_without_a_token(tmp_path):
    config = tmp_path / "open.json"
    config.write_text(json.dumps({"omniRelay": {
        "service": "closed", "admin": {"address": "127.0.0.1:0"},
        "middleware": {"rateLimit": {"maxConcurrency": 4}}}}))
    node = NodeProcess(["serve", "--config", str(config)], tmp_path, "closed")
    try:
        status, body, _ = http_request(
            "POST", f"http://{node.admin}/omnirelay/control/backpressure?mode=backpressure")
        assert status == 403 and b"tokenFile" in body
        # Read-only endpoints stay open by default; probes always are.
        assert http_request("GET", f"http://{node.admin}/metrics")[0] == 200
    finally:
        node.stop()


def test_read_access_token_closes_the_read_endpoints_but_not_the_probes(tmp_path):
    token = "r" * 48
    (tmp_path / "token").write_text(token)
    config = tmp_path / "read.json"
    config.write_text(json.dumps({"omniRelay": {
        "service": "read", "admin": {"address": "127.0.0.1:0", "tokenFile": str(tmp_path / "token"),
                                     "readAccess": "token"}}}))
    node = NodeProcess(["serve", "--config", str(config)], tmp_path, "read")
    try:
        base = f"http://{node.admin}"
        assert http_request("GET", base + "/omnirelay/introspect")[0] == 401
        assert http_request("GET", base + "/omnirelay/introspect",
                            headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert http_request("GET", base + "/readyz")[0] == 200
        assert http_request("GET", base + "/healthz")[0] == 200
    finally:
        node.stop()


def test_admin_token_file_that_cannot_be_read_is_a_startup_error(tmp_path):
    result = subprocess.run(
        [str(native_binary()), "serve", "--set", "service=t", "--set", "admin.address=127.0.0.1:0",
         "--set", f"admin.tokenFile={tmp_path / 'missing-token'}"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "omniRelay.admin.tokenFile: cannot read" in result.stderr + result.stdout


def test_registry_authenticates_registrations(tmp_path):
    token_file = tmp_path / "registry-token"
    registry = NodeProcess(["registry", "--listen", "127.0.0.1:0", "--token-file", str(token_file),
                            "--create-token"], tmp_path, "registry")
    try:
        token = token_file.read_text().strip()
        assert len(token) == 64 and (token_file.stat().st_mode & 0o777) == 0o600
        url = f"http://{registry.ready['http']}"
        entry = json.dumps({"id": "rogue", "address": "127.0.0.1:1", "role": "worker"}).encode()
        assert http_request("POST", url + "/register", entry)[0] == 401
        assert http_request("POST", url + "/register", entry,
                            headers={"Authorization": "Bearer " + "0" * 64})[0] == 401
        assert http_request("POST", url + "/register", entry,
                            headers={"Authorization": f"Bearer {token}"})[0] == 200
        worker = NodeProcess(["worker", "--listen", "127.0.0.1:0", "--instance", "pod-1",
                              "--registry", registry.ready["http"], "--registry-token-file", str(token_file),
                              "--heartbeat-interval", "200ms"], tmp_path, "worker")
        try:
            seen = set()
            for _ in range(100):  # bounded poll: the first registration is synchronous
                status, body, _ = http_request("GET", url + "/instances?role=worker")
                seen = {e["id"] for e in json.loads(body)} if status == 200 else set()
                if "pod-1" in seen:
                    break
                time.sleep(0.05)
            assert seen == {"rogue", "pod-1"}
        finally:
            worker.stop()
    finally:
        registry.stop()


def gateway_config(tmp_path: Path, secret: Path, **jwt) -> Path:
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"omniRelay": {
        "service": "gateway", "admin": {"address": "127.0.0.1:0"},
        "gateway": {"address": "127.0.0.1:0", "jwt": {"secretFile": str(secret), **jwt},
                    "clusters": {"c": {"endpoints": ["127.0.0.1:1"]}},
                    "routes": [{"prefix": "/x.Y/", "cluster": "c", "authorization": "required"}]}}}))
    return config


def test_jwt_secret_file_that_cannot_be_read_is_a_startup_error(tmp_path):
    secret = tmp_path / "state" / "jwt-secrte"  # a typo'd path
    result = subprocess.run([str(native_binary()), "serve", "--config", str(gateway_config(tmp_path, secret))],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "omniRelay.gateway.jwt.secretFile: cannot read secret file" in result.stderr + result.stdout
    assert not secret.exists()  # nothing minted behind the operator's back
    auth = subprocess.run([str(native_binary()), "auth", "--listen", "127.0.0.1:0", "--db",
                           str(tmp_path / "users.db"), "--jwt-secret-file", str(secret)],
                          capture_output=True, text=True, timeout=30)
    assert auth.returncode != 0 and "--jwt-secret-file" in auth.stderr


def test_jwt_secret_created_only_when_asked(tmp_path):
    secret = tmp_path / "state" / "jwt-secret"
    node = NodeProcess(["serve", "--config", str(gateway_config(tmp_path, secret, createIfMissing=True))],
                       tmp_path, "gateway")
    try:
        assert len(secret.read_text().strip()) == 64
    finally:
        node.stop()


def test_https_is_tls_or_a_config_error(tmp_path):
    config = tmp_path / "https.yaml"
    config.write_text(yaml.safe_dump({"omniRelay": {
        "service": "s", "inbounds": {"grpc": {"urls": ["https://127.0.0.1:0"]}}}}))
    result = subprocess.run([str(native_binary()), "config", "validate", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "omniRelay.inbounds.grpc.urls: https:// needs omniRelay.tls" in result.stderr + result.stdout

    ca = TestCa(tmp_path / "pki")
    cert, key = ca.issue("node")
    config.write_text(yaml.safe_dump({"omniRelay": {
        "service": "s", "admin": {"address": "127.0.0.1:0"},
        "inbounds": {"grpc": {"urls": ["https://127.0.0.1:0"]}},
        "tls": {"certFile": str(cert), "keyFile": str(tmp_path / "nope.key")}}}))
    result = subprocess.run([str(native_binary()), "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"omniRelay.tls.keyFile '{tmp_path / 'nope.key'}'" in result.stderr + result.stdout
