"""Outbounds whose peers come from membership (issue 10, docs/mesh.md
"Outbounds from membership"), with real `omnirelay-native serve` processes.

A gateway node has `outbounds.backends.mesh: {role: backend}` and no
endpoint list; four backend nodes run the echo service. Without restarting
the gateway, its peer list follows a graceful leave (SIGTERM), a kill -9 and
a join: calls keep succeeding, reach the newcomer, and stop reaching the
departed. The instance that served each call rides back in the
`x-omnirelay-instance` header."""

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster
from omnirelay.topology import TopologyBuilder

from mesh_support import Caller, wait_until

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"mesh routing tests need omnirelay-native: {error}", allow_module_level=True)

ECHO = "/omnirelay.echo.v1.Echo"
BACKENDS = ["b1", "b2", "b3", "b4"]


def topology():
    b = TopologyBuilder("mesh-routing", "a gateway whose outbound takes its peers from membership")
    for name in BACKENDS:
        b.node(name, role="backend", region="east").with_port("http").with_config({"omniRelay": {
            "inbounds": {"http": {"address": "${self.http}"}},
            "echo": {"instance": name, "procedures": ["httpecho.Svc/Echo"]}}})
    b.node("gw", role="gateway", region="east").with_config({"omniRelay": {
        "outbounds": {"backends": {
            "transport": "grpc",
            "mesh": {"role": "backend"},
            "peerChooser": "round-robin",
            # Echo is idempotent: a call that met a dead-but-not-yet-detected
            # member is retried on another one.
            "retry": {"maxAttempts": 3, "initialBackoff": "20ms", "maxBackoff": "100ms",
                      "idempotentProcedures": ["*"]},
        }, "backends-http": {
            # The same members through their advertised HTTP endpoints.
            "transport": "http", "mesh": {"role": "backend"}, "peerChooser": "round-robin",
        }},
        "routes": [{"prefix": f"{ECHO}/", "outbound": "backends"},
                   {"prefix": "/httpecho.Svc/", "outbound": "backends-http"}],
    }})
    return b.with_mesh_identity(profile="test").build()


def peer_ids(gw, outbound_name="backends"):
    outbound = gw.get_json("/omnirelay/introspect")["outbounds"][outbound_name]
    return sorted(p["id"] for p in outbound["peers"])


def test_mesh_outbound_follows_leave_kill_and_join_without_restart(tmp_path):
    with Cluster(topology(), tmp_path / "mesh-routing", seed=11) as cluster:
        gw = cluster["gw"]
        caller = Caller(gw.address("grpc"), f"{ECHO}/Echo")
        try:
            assert wait_until(lambda: peer_ids(gw) == BACKENDS, 30), peer_ids(gw)
            # Peers from membership are served by the grpc++ path, never the frame relay.
            assert gw.get_json("/omnirelay/introspect")["frameRoutes"] == []
            # Each member gossips its data endpoint; that is what the gateway dials.
            members = {m["id"]: m for m in gw.get_json("/omnirelay/control/peers")["members"]}
            assert members["b1"]["endpoints"]["grpc"] == cluster["b1"].address("grpc")
            dialled = {p["id"]: p["address"] for p in
                       gw.get_json("/omnirelay/introspect")["outbounds"]["backends"]["peers"]}
            assert dialled == {name: cluster[name].address("grpc") for name in BACKENDS}
            # An HTTP outbound dials the members' advertised HTTP inbounds.
            assert wait_until(lambda: peer_ids(gw, "backends-http") == BACKENDS, 10)
            dialled = {p["id"]: p["address"] for p in
                       gw.get_json("/omnirelay/introspect")["outbounds"]["backends-http"]["peers"]}
            assert dialled == {name: f"http://{cluster[name].address('http')}/" for name in BACKENDS}
            over_http = Caller(gw.address("grpc"), "/httpecho.Svc/Echo")
            try:
                assert set(over_http.burst(16)) == set(BACKENDS)
                assert over_http.failures == [], over_http.failures
            finally:
                over_http.close()
            assert set(caller.burst(40)) == set(BACKENDS)
            gw_pid = gw.pid

            # Graceful leave: b4 drains and announces it; the gateway drops it.
            cluster["b4"].stop()
            assert wait_until(lambda: peer_ids(gw) == ["b1", "b2", "b3"], 15), peer_ids(gw)
            assert set(caller.burst(30)) == {"b1", "b2", "b3"}

            # kill -9: b3 vanishes; calls keep succeeding while gossip detects it.
            cluster["b3"].kill()
            during = caller.burst(30)
            assert wait_until(lambda: peer_ids(gw) == ["b1", "b2"], 20), peer_ids(gw)
            after = caller.burst(30)
            assert set(after) == {"b1", "b2"}, after
            assert "b3" not in set(during) and "b4" not in set(during)

            # Join: a new b4 process joins the mesh and starts taking calls.
            cluster["b4"].start(wait=True)
            assert wait_until(lambda: peer_ids(gw) == ["b1", "b2", "b4"], 20), peer_ids(gw)
            assert set(caller.burst(30)) == {"b1", "b2", "b4"}
            assert wait_until(lambda: peer_ids(gw, "backends-http") == ["b1", "b2", "b4"], 10)

            assert caller.failures == [], caller.failures
            assert gw.pid == gw_pid, "the gateway was never restarted"
            # The gateway logged each change of its list.
            log = gw.log_text()
            assert log.count('"mesh.outbound.peers"') >= 4, log[-2000:]
        finally:
            caller.close()


def test_mesh_outbound_config_errors_name_the_key_path(tmp_path):
    import subprocess

    binary = str(find_native_binary())
    result = subprocess.run(
        [binary, "serve", "--name", "x", "--admin-address", "127.0.0.1:0",
         "--set", "outbounds.o.mesh.role=backend"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    assert "omniRelay.outbounds.o.mesh: needs an omniRelay.mesh section" in result.stderr, result.stderr
    result = subprocess.run(
        [binary, "serve", "--name", "x", "--admin-address", "127.0.0.1:0",
         "--set", "outbounds.o.leader.scope=global"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    assert "omniRelay.outbounds.o.leader: needs omniRelay.mesh" in result.stderr, result.stderr
