"""The fault proxy against plain TCP echo servers started here: latency is
measurable, a blackhole drops traffic and heals within its window, resets
and bandwidth caps act, faults change at run time, windows are bounded."""

import socket
import socketserver
import threading
import time

import pytest

from omnirelay.chaos import FaultError, FaultProxy, MAX_WINDOW_S


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_server):
    p = FaultProxy("test-link", echo_server, seed=7).start()
    yield p
    p.stop()


def connect(proxy, timeout=2.0):
    host, port = proxy.listen_address
    return socket.create_connection((host, port), timeout=timeout)


def roundtrip(sock, payload=b"ping"):
    start = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    assert got == payload
    return time.monotonic() - start


def outcome(sock, payload=None, timeout=2.0) -> str:
    """What a peer sees next, told apart: "reset" (RST: ECONNRESET, or EPIPE
    on a write after one), "eof" (orderly close), "timeout", or "data"."""
    sock.settimeout(timeout)
    try:
        if payload is not None:
            sock.sendall(payload)
        data = sock.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except socket.timeout:
        return "timeout"
    return "eof" if data == b"" else "data"


def poll(predicate, within_s=5.0, interval_s=0.05):
    """Waits for state, bounded: returns as soon as predicate() holds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if predicate():
                return
        except (OSError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"not reached within {within_s}s"
        time.sleep(interval_s)


def test_passes_traffic_without_faults(proxy):
    with connect(proxy) as s:
        assert roundtrip(s) < 0.5
    assert proxy.stats.accepted == 1


def test_latency_is_measurable_and_heals(proxy):
    with connect(proxy) as s:
        baseline = min(roundtrip(s) for _ in range(3))
        proxy.add("latency", duration_s=1.5, latency_ms=150)
        delayed = roundtrip(s)
        # 150 ms on the way up and 150 ms on the way down.
        assert delayed >= 0.28, (baseline, delayed)
        assert delayed < 2.0
        poll(lambda: proxy.faults() == [], within_s=5.0)  # the 1.5 s window ends by itself
        assert roundtrip(s) < 0.1


def test_latency_jitter_stays_within_bounds(proxy):
    proxy.add("latency", duration_s=5, latency_ms=100, jitter_ms=40, direction="up")
    with connect(proxy) as s:
        samples = [roundtrip(s) for _ in range(5)]
    assert all(0.055 <= x <= 0.5 for x in samples), samples


def test_blackhole_drops_traffic_and_heals_within_window(proxy):
    with connect(proxy, timeout=0.5) as s:
        roundtrip(s)
        proxy.add("blackhole", duration_s=1.0)
        added = time.monotonic()
        s.sendall(b"lost")
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert proxy.stats.dropped_up >= 4
        # New connections are accepted but go nowhere while it lasts.
        with connect(proxy, timeout=0.3) as t:
            t.sendall(b"x")
            with pytest.raises(socket.timeout):
                t.recv(10)
        # Heals by itself: a new connection works within the window + slack.
        deadline = added + 1.0 + 2.0
        while True:
            try:
                with connect(proxy, timeout=0.5) as u:
                    roundtrip(u, b"back")
                break
            except (OSError, ConnectionError):
                assert time.monotonic() < deadline, "link did not heal within its window"
                time.sleep(0.1)
        assert time.monotonic() - added >= 0.9  # not before the window ended
        # The connection that lost bytes was reset (RST, not a silent stall)
        # when the blackhole healed.
        assert outcome(s, timeout=2.0) == "reset"


def test_one_direction_blackhole(proxy):
    proxy.add("blackhole", duration_s=2, direction="down")
    with connect(proxy, timeout=0.4) as s:
        s.sendall(b"up-goes-through")
        with pytest.raises(socket.timeout):
            s.recv(100)
    assert proxy.stats.bytes_up >= len(b"up-goes-through")


def test_reset_aborts_open_connections(proxy):
    with connect(proxy) as s:
        roundtrip(s)
        proxy.add("reset", duration_s=0.5)
        # A reset is an RST seen at once, not a timeout and not an orderly close.
        assert outcome(s, b"after-reset", timeout=3.0) == "reset"

    def fresh_connection_works():
        with connect(proxy, timeout=1.0) as t:
            return outcome(t, b"ping", timeout=1.0) == "data"

    poll(fresh_connection_works, within_s=5.0)  # after the 0.5 s window


def test_bandwidth_cap(proxy):
    payload = b"x" * 48_000
    with connect(proxy, timeout=10) as s:
        fast = roundtrip(s, payload)
        proxy.add("bandwidth", duration_s=10, rate_bps=32_000, direction="down")
        slow = roundtrip(s, payload)
    assert fast < 0.5
    assert slow >= 1.0, (fast, slow)


def test_faults_change_at_run_time(proxy):
    fault = proxy.add("latency", duration_s=30, latency_ms=200, name="slow")
    assert [f.name for f in proxy.faults()] == ["slow"]
    assert proxy.remove(fault.name) is True
    assert proxy.faults() == []
    with connect(proxy) as s:
        assert roundtrip(s) < 0.15
    assert [f.name for f in proxy.history] == ["slow"]
    assert proxy.history[0].removed_at is not None


@pytest.mark.parametrize("duration", [0, -1, MAX_WINDOW_S + 1])
def test_every_fault_has_a_bounded_window(proxy, duration):
    with pytest.raises(FaultError):
        proxy.add("blackhole", duration_s=duration)


def test_rejects_unknown_kinds_and_missing_params(proxy):
    with pytest.raises(FaultError):
        proxy.add("meteor", duration_s=1)
    with pytest.raises(FaultError):
        proxy.add("latency", duration_s=1)
    with pytest.raises(FaultError):
        proxy.add("bandwidth", duration_s=1, rate_bps=0)


def test_jitter_draws_replay_with_the_seed(echo_server):
    a = FaultProxy("link", echo_server, seed=42)
    b = FaultProxy("link", echo_server, seed=42)
    c = FaultProxy("link", echo_server, seed=43)
    draws = lambda p: [p.random.uniform(-1, 1) for _ in range(5)]
    assert draws(a) == draws(b) != draws(c)
