"""Data plane end to end between real processes: call kinds over gRPC (direct
and through a forwarding relay), HTTP kinds, middleware behaviour, config
errors, graceful drain and /metrics.

Clients are Debian's python3-grpcio using generic (bytes in, bytes out) calls.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from dataplane_support import (NodeProcess, echo_request, http_request, metric_total,
                               native_binary, parse_echo_response)

ECHO = "/omnirelay.echo.v1.Echo"


def identity(x):
    return x


def unary(channel, method):
    return channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)


@pytest.fixture
def nodes(tmp_path):
    started = []

    def start(args, name, env=None):
        node = NodeProcess(args, tmp_path, name, env)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def echo_args(instance="e1", *extra):
    return ["echo", "--instance", instance, "--grpc-address", "127.0.0.1:0",
            "--admin-address", "127.0.0.1:0", *extra]


def write_config(tmp_path, name, section):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"omniRelay": section}))
    return path


# The forwarding tests run on both data paths (docs/dataplane.md "Fast path"):
# "grpc" is the default node (full middleware chain, so every route stays on
# the grpc++ generic path); "frame" is a plain forwarding node (deadline and
# recovery only), whose routes the HTTP/2 frame relay serves by default.
FRAME_MIDDLEWARE = {"inbound": ["recovery", "deadline"], "outbound": ["deadline"]}


@pytest.fixture(params=["grpc", "frame"])
def data_path(request):
    return request.param


def on_path(section, data_path):
    """The node config for `data_path`; the route choice itself is `auto`."""
    if data_path == "frame":
        section["middleware"] = dict(FRAME_MIDDLEWARE)
    return section


def assert_path(node, data_path, prefixes):
    frame = {r["prefix"].lstrip("/") for r in node.get_json("/omnirelay/introspect")["frameRoutes"]}
    assert frame == (set(prefixes) if data_path == "frame" else set()), frame


def relay_config(tmp_path, backends, name="relay", data_path="grpc", **extra):
    section = {
        "service": name,
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}, "http": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {
            "echo": {"transport": "grpc", "endpoints": backends, "peerChooser": "round-robin"}
        },
        "routes": [
            {"prefix": f"{ECHO}/EchoStream", "outbound": "echo", "kind": "server-stream"},
            {"prefix": f"{ECHO}/EchoCollect", "outbound": "echo", "kind": "client-stream"},
            {"prefix": f"{ECHO}/EchoDuplex", "outbound": "echo", "kind": "duplex"},
            {"prefix": f"{ECHO}/Notify", "outbound": "echo", "kind": "oneway"},
            {"prefix": f"{ECHO}/", "outbound": "echo"},
        ],
    }
    section.update(extra)
    return write_config(tmp_path, name, on_path(section, data_path))


def check_all_kinds(address, instances):
    with grpc.insecure_channel(address) as channel:
        # unary: bytes come back unchanged; the instance rides in metadata
        seen = set()
        for i in range(6):
            body, call = unary(channel, f"{ECHO}/Echo").with_call(
                echo_request(b"hi-%d" % i), timeout=5)
            assert parse_echo_response(body)["payload"] == b"hi-%d" % i
            seen.add(dict(call.initial_metadata())["x-omnirelay-instance"])
        assert seen == set(instances)
        # server-stream
        stream = channel.unary_stream(f"{ECHO}/EchoStream", request_serializer=identity,
                                      response_deserializer=identity)
        replies = [parse_echo_response(m) for m in stream(echo_request(b"s", 4), timeout=5)]
        assert [r["index"] for r in replies] == [0, 1, 2, 3]
        assert all(r["payload"] == b"s" for r in replies)
        # client-stream
        collect = channel.stream_unary(f"{ECHO}/EchoCollect", request_serializer=identity,
                                       response_deserializer=identity)
        assert collect(iter([b"a", b"b", b"c"]), timeout=5) == b"abc"
        # duplex
        duplex = channel.stream_stream(f"{ECHO}/EchoDuplex", request_serializer=identity,
                                       response_deserializer=identity)
        assert list(duplex(iter([b"x", b"y"]), timeout=5)) == [b"x", b"y"]
        # oneway: acknowledged with an empty body
        assert unary(channel, f"{ECHO}/Notify")(b"fire", timeout=5) == b""
        # unknown procedure
        with pytest.raises(grpc.RpcError) as error:
            unary(channel, "/no.Such/Method")(b"", timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_every_call_kind_direct(nodes):
    echo = nodes(echo_args("e1"), "e1")
    check_all_kinds(echo.grpc, ["e1"])
    assert echo.get_json("/omnirelay/echo/stats")["oneway"] == 1


def test_every_call_kind_through_a_forwarding_relay(nodes, tmp_path, data_path):
    e1 = nodes(echo_args("e1"), "e1")
    e2 = nodes(echo_args("e2"), "e2")
    relay = nodes(["serve", "--config",
                   str(relay_config(tmp_path, [e1.grpc, e2.grpc], data_path=data_path))], "relay")
    # Oneway stays on the grpc++ path (acknowledged on arrival), the rest is frame-relayed.
    assert_path(relay, data_path, {f"{ECHO[1:]}/EchoStream", f"{ECHO[1:]}/EchoCollect",
                                   f"{ECHO[1:]}/EchoDuplex", f"{ECHO[1:]}/"})
    check_all_kinds(relay.grpc, ["e1", "e2"])
    intro = relay.get_json("/omnirelay/introspect")
    assert {r["prefix"] for r in intro["routes"]} >= {"omnirelay.echo.v1.Echo/"}
    assert len(intro["outbounds"]["echo"]["peers"]) == 2


def test_status_codes_cross_the_relay_unchanged(nodes, tmp_path, data_path):
    echo = nodes(echo_args("busy", "--max-concurrency", "1", "--latency", "400ms"), "busy")
    relay = nodes(["serve", "--config",
                   str(relay_config(tmp_path, [echo.grpc], data_path=data_path))], "relay")
    with grpc.insecure_channel(relay.grpc) as channel, ThreadPoolExecutor(4) as pool:
        call = unary(channel, f"{ECHO}/Echo")
        futures = [pool.submit(lambda: call.with_call(b"x", timeout=5)) for _ in range(4)]
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert dict(error.trailing_metadata()).get("rpc-error-code") == "echo-busy"
    assert codes.count(grpc.StatusCode.OK) >= 1
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_deadline_exceeded_direct_and_propagated_through_relay(nodes, tmp_path, data_path):
    echo = nodes(echo_args("slow", "--latency", "1s"), "slow")
    relay = nodes(["serve", "--config",
                   str(relay_config(tmp_path, [echo.grpc], data_path=data_path))], "relay")
    for address in (echo.grpc, relay.grpc):
        with grpc.insecure_channel(address) as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                unary(channel, f"{ECHO}/Echo")(b"x", timeout=0.2)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 0.9
    # Rpc-Ttl-Ms on HTTP is enforced by the deadline middleware as well.
    status, _, headers = http_request("POST", f"http://{relay.http}/", b"x",
                                      {"Rpc-Service": "omnirelay.echo.v1.Echo",
                                       "Rpc-Procedure": "Echo", "Rpc-Ttl-Ms": "100"})
    assert status == 504 and headers["rpc-status"] == "DEADLINE_EXCEEDED"


def test_http_kinds_end_to_end(nodes):
    echo = nodes(echo_args("h1", "--http-address", "127.0.0.1:0"), "h1")
    base = f"http://{echo.http}/"
    hdr = {"Rpc-Service": "omnirelay.echo.v1.Echo", "Rpc-Caller": "pytest"}
    status, body, headers = http_request("POST", base, echo_request(b"over-http"),
                                         {**hdr, "Rpc-Procedure": "Echo"})
    assert status == 200 and headers["rpc-status"] == "OK"
    assert parse_echo_response(body)["payload"] == b"over-http"
    assert headers["x-omnirelay-instance"] == "h1"
    status, body, headers = http_request("POST", base, b"n", {**hdr, "Rpc-Procedure": "Notify"})
    assert status == 202 and body == b""
    status, body, headers = http_request("POST", base, echo_request(b"sse", 3),
                                         {**hdr, "Rpc-Procedure": "EchoStream"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.decode("latin-1").split("\n\n") if e.strip()]
    assert len(events) == 4 and events[-1].startswith("event: end")
    status, body, headers = http_request("POST", base, b"", {**hdr, "Rpc-Procedure": "Nope"})
    assert status == 501 and headers["rpc-status"] == "UNIMPLEMENTED"
    assert "Nope" in headers["rpc-error-message"]


def test_http_outbound_uses_a_peer_list(nodes, tmp_path):
    h1 = nodes(echo_args("h1", "--http-address", "127.0.0.1:0"), "h1")
    h2 = nodes(echo_args("h2", "--http-address", "127.0.0.1:0"), "h2")
    cfg = write_config(tmp_path, "gw", {
        "service": "gw",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {"web": {"transport": "http", "endpoints": [f"http://{h1.http}",
                                                                 f"http://{h2.http}"],
                              "peerChooser": "round-robin"}},
        "routes": [{"prefix": f"{ECHO}/", "outbound": "web"}],
    })
    gw = nodes(["serve", "--config", str(cfg)], "gw")
    seen = set()
    with grpc.insecure_channel(gw.grpc) as channel:
        for i in range(6):
            body, call = unary(channel, f"{ECHO}/Echo").with_call(echo_request(b"%d" % i), timeout=5)
            assert parse_echo_response(body)["payload"] == b"%d" % i
            seen.add(dict(call.initial_metadata())["x-omnirelay-instance"])
        with pytest.raises(grpc.RpcError) as error:
            unary(channel, f"{ECHO}/Missing")(b"", timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert seen == {"h1", "h2"}


def test_rate_limit_and_backpressure_switch(nodes, tmp_path):
    token = "t" * 40
    (tmp_path / "admin-token").write_text(token + "\n")
    cfg = write_config(tmp_path, "rl", {
        "service": "rl",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0", "tokenFile": str(tmp_path / "admin-token")},
        "echo": {"instance": "rl", "latency": "300ms"},
        "middleware": {"rateLimit": {"maxConcurrency": 8,
                                     "backpressure": {"maxConcurrency": 1}}},
    })
    node = nodes(["serve", "--config", str(cfg)], "rl")

    def burst():
        with grpc.insecure_channel(node.grpc) as channel, ThreadPoolExecutor(4) as pool:
            call = unary(channel, f"{ECHO}/Echo")
            futures = [pool.submit(call, b"x", timeout=5) for _ in range(4)]
            codes = []
            for f in futures:
                try:
                    f.result()
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)
            return codes

    assert burst() == ["OK"] * 4
    switch = f"http://{node.admin}/omnirelay/control/backpressure?mode=backpressure"
    # The control plane is closed: no token or a wrong one changes nothing.
    status, _, headers = http_request("POST", switch)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert http_request("POST", switch, headers={"Authorization": "Bearer " + "x" * 40})[0] == 401
    assert burst() == ["OK"] * 4
    status, body, _ = http_request("POST", switch, headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["mode"] == "backpressure"
    codes = burst()
    assert codes.count("OK") >= 1 and codes.count("RESOURCE_EXHAUSTED") >= 2, codes
    assert metric_total(node.metrics(), "omnirelay_ratelimit_rejected_total") >= 2


def test_retry_stops_at_deadline_and_budget(nodes, tmp_path):
    import socket
    with socket.socket() as s:  # a port with nobody listening: every attempt is UNAVAILABLE
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    no_breaker = {"enabled": False}
    cfg = write_config(tmp_path, "retry", {
        "service": "retry",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {
            "deadline": {"endpoints": [dead], "circuitBreaker": no_breaker,
                         "retry": {"maxAttempts": 100, "initialBackoff": "200ms",
                                   "multiplier": 1, "jitter": 0, "budgetMax": 1000,
                                   "budgetRatio": 1, "idempotentProcedures": ["Call"]}},
            "budget": {"endpoints": [dead], "circuitBreaker": no_breaker,
                       "retry": {"maxAttempts": 10, "initialBackoff": "5ms", "jitter": 0,
                                 "budgetMax": 2, "budgetRatio": 0,
                                 "idempotentProcedures": ["budget.Svc/Call"]}},
        },
        "routes": [{"prefix": "/deadline.Svc/", "outbound": "deadline"},
                   {"prefix": "/budget.Svc/", "outbound": "budget"}],
    })
    node = nodes(["serve", "--config", str(cfg)], "retry")
    with grpc.insecure_channel(node.grpc) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            unary(channel, "/deadline.Svc/Call")(b"", timeout=0.8)
        elapsed = time.monotonic() - started
        # The retry that would start past the deadline is never scheduled: the
        # call ends with the last attempt's UNAVAILABLE, not by the timer.
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value
        assert elapsed < 0.8
        text = node.metrics()
        scheduled = metric_total(text, "omnirelay_retry_scheduled_total", rpc_service="deadline.Svc")
        assert 2 <= scheduled <= 4
        assert metric_total(text, "omnirelay_retry_exhausted_total", rpc_service="deadline.Svc") == 1

        for _ in range(2):
            with pytest.raises(grpc.RpcError) as error:
                unary(channel, "/budget.Svc/Call")(b"", timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        text = node.metrics()
        # Budget of 2 tokens, no refill: the first call retries twice, the second not at all.
        assert metric_total(text, "omnirelay_retry_scheduled_total", rpc_service="budget.Svc") == 2
        assert metric_total(text, "omnirelay_retry_exhausted_total", rpc_service="budget.Svc") == 2


def test_traceparent_propagates_across_two_hops(nodes, tmp_path):
    echo = nodes(echo_args("t1"), "t1")
    relay = nodes(["serve", "--config", str(relay_config(tmp_path, [echo.grpc]))], "relay")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    client_span = "00f067aa0ba902b7"
    with grpc.insecure_channel(relay.grpc) as channel:
        unary(channel, f"{ECHO}/Echo")(b"x", timeout=5,
                                       metadata=[("traceparent", f"00-{trace_id}-{client_span}-01")])
    relay_spans = [s for s in relay.get_json("/omnirelay/traces")["spans"] if s["traceId"] == trace_id]
    echo_spans = [s for s in echo.get_json("/omnirelay/traces")["spans"] if s["traceId"] == trace_id]
    server = [s for s in relay_spans if s["kind"] == "server"]
    client = [s for s in relay_spans if s["kind"] == "client"]
    assert len(server) == 1 and server[0]["parentSpanId"] == client_span
    assert len(client) == 1 and client[0]["parentSpanId"] == server[0]["spanId"]
    assert len(echo_spans) == 1 and echo_spans[0]["parentSpanId"] == client[0]["spanId"]


def test_config_errors_name_the_key(tmp_path):
    bad = write_config(tmp_path, "bad", {
        "service": "gw",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "outbounds": {"analytics": {"transport": "grpc", "service": "trace.Analytics",
                                    "procedure": "trace.Analytics/Process",
                                    "endpoints": ["https://analytics-1.staging.corp:8443"],
                                    "peerChooser": "fewest"}},
    })
    result = subprocess.run([str(native_binary()), "config", "validate", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "omniRelay.outbounds.analytics.peerChooser: unknown chooser 'fewest'" in result.stderr
    # serve refuses the same file with the same message
    result = subprocess.run([str(native_binary()), "serve", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "omniRelay.outbounds.analytics.peerChooser" in result.stderr
    # --set and the environment fix it
    fixed = subprocess.run([str(native_binary()), "config", "validate", str(bad),
                            "--set", "outbounds.analytics.peerChooser=round-robin"],
                           capture_output=True, text=True, timeout=30)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["omniRelay"]["outbounds"]["analytics"]["peerChooser"] == "round-robin"
    env_fixed = subprocess.run([str(native_binary()), "config", "validate", str(bad)],
                               capture_output=True, text=True, timeout=30,
                               env={"OMNIRELAY__OUTBOUNDS__ANALYTICS__PEERCHOOSER": "fewest-pending"})
    assert env_fixed.returncode == 0, env_fixed.stderr
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("omniRelay:\n  service: gw\n  inbounds:\n    grpc:\n      address: nowhere\n")
    result = subprocess.run([str(native_binary()), "config", "validate", str(yaml_file)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "omniRelay.inbounds.grpc.address: 'nowhere' is not host:port" in result.stderr


def wait_draining(node, within_s=5.0):
    """Polls the node's /readyz until it reports draining (bounded), instead
    of sleeping and hoping SIGTERM has been handled."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            status, body, _ = http_request("GET", f"http://{node.admin}/readyz")
            if status == 503 and "draining" in json.loads(body)["reasons"]:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "node did not start draining"
        time.sleep(0.01)


def test_data_path_config_errors_name_the_key(tmp_path):
    section = {
        "service": "fr",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {"e": {"endpoints": ["127.0.0.1:1"]}},
        "routes": [{"prefix": "/x.Svc/", "outbound": "e", "dataPath": "fast"}],
    }
    result = subprocess.run([str(native_binary()), "config", "validate",
                             str(write_config(tmp_path, "bad", section))],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "omniRelay.routes[0].dataPath: unknown data path 'fast'" in result.stderr
    # "frame" where the default middleware chain (tracing, metrics, ...) must see every call
    section["routes"][0]["dataPath"] = "frame"
    result = subprocess.run([str(native_binary()), "serve", "--config",
                             str(write_config(tmp_path, "frame", section))],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert ("omniRelay.routes[0].dataPath: 'frame' is not possible: "
            "inbound middleware 'tracing' needs the grpc++ path") in result.stderr


def test_frame_relay_drain_finishes_in_flight_and_refuses_new_calls(nodes, tmp_path):
    echo = nodes(echo_args("fd", "--latency", "600ms"), "fd")
    relay = nodes(["serve", "--config",
                   str(relay_config(tmp_path, [echo.grpc], data_path="frame"))], "relay")
    assert_path(relay, "frame", {f"{ECHO[1:]}/EchoStream", f"{ECHO[1:]}/EchoCollect",
                                 f"{ECHO[1:]}/EchoDuplex", f"{ECHO[1:]}/"})
    results = []
    with grpc.insecure_channel(relay.grpc) as channel:
        call = unary(channel, f"{ECHO}/Echo")
        call(b"warm", timeout=5)

        def one(i):
            try:
                results.append(call(b"%d" % i, timeout=10))
            except grpc.RpcError as error:
                results.append(error.code())

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while echo.get_json("/omnirelay/echo/stats")["inFlight"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        relay.terminate()
        for t in threads:
            t.join(timeout=10)
    assert sorted(results) == sorted(b"%d" % i for i in range(4))
    assert relay.wait() == 0


def test_graceful_drain_loses_no_in_flight_request(nodes):
    echo = nodes(echo_args("d1", "--latency", "600ms"), "d1")
    results = []
    with grpc.insecure_channel(echo.grpc) as channel:
        call = unary(channel, f"{ECHO}/Echo")
        # Warm the connection so every call below is in flight before SIGTERM.
        call(b"warm", timeout=5)

        def one(i):
            try:
                results.append(call(b"%d" % i, timeout=10))
            except grpc.RpcError as error:
                results.append(error.code())

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while echo.get_json("/omnirelay/echo/stats")["inFlight"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        echo.terminate()
        wait_draining(echo)
        with pytest.raises(grpc.RpcError) as error:
            call(b"late", timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        for t in threads:
            t.join(timeout=10)
    assert sorted(results) == sorted(b"%d" % i for i in range(8))
    assert echo.wait() == 0


def test_metrics_show_the_seed_names_after_traffic(nodes, tmp_path):
    echo = nodes(echo_args("m1"), "m1")
    relay = nodes(["serve", "--config", str(relay_config(tmp_path, [echo.grpc]))], "relay")
    with grpc.insecure_channel(relay.grpc) as channel:
        for _ in range(5):
            unary(channel, f"{ECHO}/Echo")(b"x", timeout=5)
        with pytest.raises(grpc.RpcError):
            unary(channel, "/nope.Svc/X")(b"", timeout=5)
    text = relay.metrics()
    ok = metric_total(text, "omnirelay_rpc_successes_total", rpc_service="omnirelay.echo.v1.Echo",
                      rpc_procedure="Echo", rpc_transport="grpc", rpc_status="OK")
    assert ok >= 10  # inbound and outbound sides
    assert metric_total(text, "omnirelay_rpc_requests_total", rpc_procedure="Echo") >= 10
    assert "omnirelay_rpc_duration_seconds" in text
    ready = relay.get_json("/readyz")
    assert ready["ready"] is True


def test_contention_pool_exhausted_without_ttl_and_deadline_with_ttl(nodes, tmp_path, data_path):
    # Seed 000: capped peers; TTL-less calls fail ResourceExhausted only after
    # every peer rejected the lease (never DeadlineExceeded); with a TTL they
    # wait and end in DeadlineExceeded without inflating pool_exhausted.
    b1 = nodes(echo_args("c1", "--latency", "400ms"), "c1")
    b2 = nodes(echo_args("c2", "--latency", "400ms"), "c2")
    cfg = write_config(tmp_path, "gw", on_path({
        "service": "gw",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {"analytics": {"transport": "grpc", "endpoints": [b1.grpc, b2.grpc],
                                    "peerChooser": "fewest-pending", "maxInFlightPerPeer": 1}},
        "routes": [{"prefix": f"{ECHO}/", "outbound": "analytics"}],
    }, data_path))
    gw = nodes(["serve", "--config", str(cfg)], "gw")
    assert_path(gw, data_path, {f"{ECHO[1:]}/"})

    def burst(timeout):
        with grpc.insecure_channel(gw.grpc) as channel, ThreadPoolExecutor(6) as pool:
            call = unary(channel, f"{ECHO}/Echo")
            futures = [pool.submit(call.with_call, b"x", timeout=timeout) for _ in range(6)]
            codes = []
            for f in futures:
                try:
                    f.result(timeout=10)
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert dict(error.trailing_metadata())["rpc-error-code"] == "peer-pool-exhausted"
            return codes

    codes = burst(None)  # TTL-less: no deadline reaches the gateway
    assert codes.count("OK") == 2 and codes.count("RESOURCE_EXHAUSTED") == 4, codes
    text = gw.metrics()
    exhausted = metric_total(text, "omnirelay_peer_pool_exhausted_total")
    assert exhausted == 4
    assert metric_total(text, "omnirelay_peer_lease_rejected_total", peer_rejection_reason="busy") >= 8
    codes = burst(0.15)  # with a TTL shorter than the backends' latency
    assert "DEADLINE_EXCEEDED" in codes and "RESOURCE_EXHAUSTED" not in codes, codes
    assert metric_total(gw.metrics(), "omnirelay_peer_pool_exhausted_total") == exhausted
    health = gw.get_json("/omnirelay/control/lease-health")
    assert "analytics" in health["outbounds"]
    # the breaker never counted client-side rejections as peer failures: still ready
    time.sleep(0.5)
    assert gw.get_json("/readyz")["ready"] is True


def test_readyz_reports_an_outbound_without_available_peers(nodes, tmp_path, data_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    cfg = write_config(tmp_path, "lonely", on_path({
        "service": "lonely",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {"down": {"endpoints": [dead],
                               "circuitBreaker": {"consecutiveFailures": 1, "openDelay": "30s"}}},
        "routes": [{"prefix": "/down.Svc/", "outbound": "down"}],
    }, data_path))
    node = nodes(["serve", "--config", str(cfg)], "lonely")
    assert_path(node, data_path, {"down.Svc/"})
    assert node.get_json("/readyz")["ready"] is True
    with grpc.insecure_channel(node.grpc) as channel:
        with pytest.raises(grpc.RpcError) as error:
            unary(channel, "/down.Svc/Call")(b"", timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    status, body, headers = http_request("GET", f"http://{node.admin}/readyz")
    assert status == 503 and "retry-after" in headers
    assert json.loads(body)["reasons"] == ["outbound 'down' has no available peers"]


def test_http_drain_answers_503_with_retry_after_and_finishes_in_flight(nodes):
    echo = nodes(echo_args("hd", "--http-address", "127.0.0.1:0", "--latency", "600ms"), "hd")
    hdr = {"Rpc-Service": "omnirelay.echo.v1.Echo", "Rpc-Procedure": "Echo"}
    results = []

    def one():
        results.append(http_request("POST", f"http://{echo.http}/", b"in-flight", hdr)[:2])

    t = threading.Thread(target=one)
    t.start()
    deadline = time.monotonic() + 5
    while echo.get_json("/omnirelay/echo/stats")["inFlight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    echo.terminate()
    wait_draining(echo)
    status, body, headers = http_request("POST", f"http://{echo.http}/", b"late", hdr)
    assert status == 503 and headers["retry-after"] == "1" and headers["rpc-status"] == "UNAVAILABLE"
    t.join(timeout=10)
    assert results == [(200, b"in-flight")]
    assert echo.wait() == 0
