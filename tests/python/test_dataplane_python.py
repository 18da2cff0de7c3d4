"""omnirelay.node: an in-process node from Python — Python-implemented unary
procedures served over gRPC and HTTP by the C++ core, and calls through an
outbound to another (out-of-process) node."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from dataplane_support import NodeProcess, echo_request, http_request, parse_echo_response
from omnirelay import errors
from omnirelay.node import Node


def identity(x):
    return x


def base_config(**extra):
    config = {"service": "py", "admin": {"address": "127.0.0.1:0"},
              "inbounds": {"grpc": {"address": "127.0.0.1:0"},
                           "http": {"address": "127.0.0.1:0"}}}
    config.update(extra)
    return config


def test_python_procedures_over_grpc_and_http():
    node = Node(base_config())
    calls = []

    @node.procedure("Greet", service="demo.Greeter")
    def greet(body, meta):
        calls.append(meta["transport"])
        return b"hello " + body

    @node.procedure("Fail", service="demo.Greeter")
    def fail(body, meta):
        raise errors.ResourceExhausted("too busy", error_code="py-busy")

    @node.procedure("Crash", service="demo.Greeter")
    def crash(body, meta):
        raise ValueError("boom")

    with node:
        with grpc.insecure_channel(node.grpc_address) as channel:
            greet_call = channel.unary_unary("/demo.Greeter/Greet", request_serializer=identity,
                                             response_deserializer=identity)
            assert greet_call(b"grpc", timeout=5) == b"hello grpc"
            with pytest.raises(grpc.RpcError) as error:
                channel.unary_unary("/demo.Greeter/Fail")(b"", timeout=5)
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(error.value.trailing_metadata())["rpc-error-code"] == "py-busy"
            with pytest.raises(grpc.RpcError) as error:
                channel.unary_unary("/demo.Greeter/Crash")(b"", timeout=5)
            assert error.value.code() == grpc.StatusCode.INTERNAL
            assert "boom" in error.value.details()
            # concurrent callers are served while Python holds the GIL per call only
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda i: greet_call(b"%d" % i, timeout=5), range(32)))
            assert results == [b"hello %d" % i for i in range(32)]
        status, body, headers = http_request("POST", f"http://{node.http_address}/", b"http",
                                             {"Rpc-Service": "demo.Greeter", "Rpc-Procedure": "Greet"})
        assert (status, body) == (200, b"hello http")
    assert calls.count("grpc") == 33 and calls.count("http") == 1


def test_call_through_an_outbound_to_an_echo_process(tmp_path):
    echo = NodeProcess(["echo", "--instance", "remote", "--grpc-address", "127.0.0.1:0",
                        "--admin-address", "127.0.0.1:0"], tmp_path, "remote")
    try:
        node = Node(base_config(outbounds={"echo": {"transport": "grpc",
                                                    "endpoints": [echo.grpc],
                                                    "service": "omnirelay.echo.v1.Echo"}}))
        with node:
            body, headers = node.call_with_headers("echo", "Echo", echo_request(b"from-python"),
                                                   timeout=5)
            assert parse_echo_response(body)["payload"] == b"from-python"
            assert headers["x-omnirelay-instance"] == "remote"
            with pytest.raises(errors.Unimplemented):
                node.call("echo", "NoSuchMethod", b"", timeout=5)
            intro = node.introspect()
            assert intro["outbounds"]["echo"]["transport"] == "grpc"
    finally:
        echo.stop()


def test_config_errors_raise_invalid_argument_naming_the_key():
    with pytest.raises(errors.InvalidArgument) as error:
        Node(base_config(outbounds={"x": {"endpoints": ["127.0.0.1:1"], "peerChooser": "fewest"}}))
    assert "omniRelay.outbounds.x.peerChooser: unknown chooser 'fewest'" in str(error.value)


def test_gil_is_released_while_a_call_waits():
    # node.call() goes through the binding: C++ outbound -> gRPC -> the other
    # node's Python handler. A Python thread must keep running meanwhile; if
    # the binding held the GIL, neither the ticker nor the handler (which needs
    # the GIL on a C++ worker thread) could run and the call would time out.
    server = Node(base_config())

    @server.procedure("Slow", service="demo")
    def slow(body, meta):
        time.sleep(0.3)
        return body

    with server:
        client = Node(base_config(outbounds={"server": {"transport": "grpc",
                                                        "endpoints": [server.grpc_address]}}))
        with client:
            ticks = []
            stop = threading.Event()

            def ticker():
                while not stop.is_set():
                    ticks.append(time.monotonic())
                    time.sleep(0.01)

            t = threading.Thread(target=ticker)
            t.start()
            started = time.monotonic()
            try:
                assert client.call("server", "Slow", b"z", service="demo", timeout=10) == b"z"
            finally:
                finished = time.monotonic()
                stop.set()
                t.join()
            during = [tick for tick in ticks if started < tick < finished]
            assert finished - started >= 0.25
            assert len(during) >= 5, (len(during), finished - started)


def test_node_loads_files_through_the_serve_loader(tmp_path, monkeypatch):
    # YAML semantics are yaml-cpp's with our scalar rules (as `serve`), not
    # PyYAML's: `yes` stays the string "yes" (PyYAML would make it True), and
    # OMNIRELAY__* environment overrides apply before `sets`.
    path = tmp_path / "node.yaml"
    path.write_text("omniRelay:\n"
                    "  service: from-yaml\n"
                    "  admin: {address: \"127.0.0.1:0\"}\n"
                    "  inbounds:\n"
                    "    grpc: {address: \"127.0.0.1:0\"}\n"
                    "  echo:\n"
                    "    instance: yes\n"
                    "    maxConcurrency: 3\n")
    monkeypatch.setenv("OMNIRELAY__ECHO__MAXCONCURRENCY", "7")
    node = Node(path)
    config = node.introspect()["config"]["omniRelay"]
    assert config["service"] == "from-yaml"
    assert config["echo"]["instance"] == "yes"
    assert config["echo"]["maxConcurrency"] == 7
    assert Node(str(path), sets=["echo.maxConcurrency=9"]).introspect()[
        "config"]["omniRelay"]["echo"]["maxConcurrency"] == 9
    assert Node(path, use_environment=False).introspect()[
        "config"]["omniRelay"]["echo"]["maxConcurrency"] == 3
    monkeypatch.setenv("OMNIRELAY__ECHO__MAXCONCURRENCY", "nan")
    with pytest.raises(errors.InvalidArgument) as error:
        Node(path)
    assert "omniRelay.echo.maxConcurrency" in str(error.value)
