"""The shared core as Python sees it: status mapping, typed exceptions,
deadline resolution with a manual clock, metrics exposition and snapshots."""

from datetime import timedelta

import pytest

import omnirelay
from omnirelay import _core, errors
from omnirelay import StatusCode

HTTP_TABLE = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 412,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}


@pytest.mark.parametrize("code,http", sorted(HTTP_TABLE.items(), key=lambda kv: int(kv[0])))
def test_status_to_http_matches_the_documented_table(code, http):
    assert omnirelay.status_to_http(code) == http


def test_python_exception_classes_agree_with_the_core():
    for code, http in HTTP_TABLE.items():
        if code == StatusCode.OK:
            continue
        cls = errors.exception_for(code)
        assert cls.http_status == http
        assert cls.name == omnirelay.status_code_name(code)
        assert issubclass(cls, errors.OmniRelayError)


@pytest.mark.parametrize(
    "code,cls",
    [
        (StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (StatusCode.UNAVAILABLE, errors.Unavailable),
        (StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
    ],
)
def test_cpp_status_raises_the_typed_exception(code, cls):
    with pytest.raises(cls) as caught:
        _core.raise_status(code, "all peers busy", "peer-pool-exhausted")
    assert caught.value.message == "all peers busy"
    assert caught.value.error_code == "peer-pool-exhausted"
    assert caught.value.status_code == code


def test_invalid_input_from_python_raises_invalid_argument():
    with pytest.raises(errors.InvalidArgument):
        omnirelay.parse_timestamp("not a time")
    with pytest.raises(errors.InvalidArgument):
        omnirelay.parse_duration("5 parsecs")
    with pytest.raises(errors.InvalidArgument):
        omnirelay.set_log_level("loud")


def test_effective_deadline_is_earlier_of_deadline_and_ttl_with_manual_clock():
    clock = omnirelay.ManualClock(start=1_800_000_000.0)
    meta = omnirelay.RequestMeta()
    assert meta.effective_deadline(clock.now()) is None

    meta.time_to_live = timedelta(milliseconds=50)
    assert meta.effective_deadline(clock.now()) == pytest.approx(1_800_000_000.05)
    clock.advance(timedelta(seconds=1))
    assert meta.effective_deadline(clock.now()) == pytest.approx(1_800_000_001.05)

    meta.deadline = clock.now() + 0.01  # earlier than now + TTL
    assert meta.effective_deadline(clock.now()) == pytest.approx(1_800_000_001.01)
    meta.time_to_live = None
    clock.advance(5.0)
    assert meta.effective_deadline(clock.now()) == pytest.approx(1_800_000_001.01)


def test_headers_are_case_insensitive():
    meta = omnirelay.RequestMeta()
    meta.set_header("Session-Id", "abc")
    assert meta.header("session-id") == "abc"
    assert meta.header("SESSION-ID") == "abc"
    assert meta.header("missing") is None


def test_timestamps_round_trip():
    seconds = omnirelay.parse_timestamp("2026-11-23T10:00:00.250Z")
    assert omnirelay.format_timestamp(seconds) == "2026-11-23T10:00:00.250Z"


def test_prometheus_exposition_and_snapshot():
    registry = omnirelay.MetricsRegistry()
    registry.add_counter("omnirelay.peer.pool_exhausted", 2, {"rpc.service": "svc"}, help="h")
    registry.add_counter(
        "omnirelay.peer.lease_rejected", 1, {"peer.rejection_reason": "busy", "rpc.peer": "a"}
    )
    registry.add_counter(
        "omnirelay.peer.lease_rejected", 4, {"peer.rejection_reason": "busy", "rpc.peer": "b"}
    )
    for value in (1.0, 2.0, 3.0, 400.0):
        registry.record("omnirelay.peer.lease.duration", value, {"rpc.peer": "a"})

    text = registry.render_prometheus()
    assert 'omnirelay_peer_pool_exhausted_total{rpc_service="svc"} 2\n' in text
    assert (
        'omnirelay_peer_lease_rejected_total{peer_rejection_reason="busy",rpc_peer="b"} 4\n' in text
    )
    assert "# TYPE omnirelay_peer_lease_duration_seconds histogram\n" in text
    assert 'omnirelay_peer_lease_duration_seconds_count{rpc_peer="a"} 4\n' in text

    assert registry.total("omnirelay.peer.lease_rejected", {"peer.rejection_reason": "busy"}) == 5
    (histogram,) = [p for p in registry.snapshot() if p["kind"] == "histogram"]
    assert histogram["name"] == "omnirelay.peer.lease.duration"
    assert histogram["tags"] == {"rpc.peer": "a"}
    assert histogram["histogram"]["count"] == 4
    assert histogram["histogram"]["max"] == pytest.approx(400.0)
    assert histogram["histogram"]["p50"] == pytest.approx(2.0, rel=0.02)


def test_latency_histogram_p999_precision():
    histogram = omnirelay.LatencyHistogram()
    values = [i / 10 for i in range(1, 10001)]  # 0.1 .. 1000.0 ms
    for value in values:
        histogram.record(value)
    assert histogram.count == 10000
    assert histogram.percentile(0.999) == pytest.approx(999.0, rel=0.016)
    assert histogram.percentile(0.5) == pytest.approx(500.0, rel=0.016)


def test_log_level_is_adjustable(tmp_path):
    log = tmp_path / "node.log"
    omnirelay.set_log_file(str(log))
    try:
        omnirelay.set_log_level("warn")
        _core.log("info", "hidden.event")
        _core.log("error", "shown.event", {"peer": "b1"})
        assert omnirelay.get_log_level() == "warn"
    finally:
        omnirelay.set_log_level("info")
        omnirelay.set_log_file("")
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert '"event":"shown.event"' in lines[0] and '"peer":"b1"' in lines[0]


def test_python_uses_the_one_duration_and_address_parser():
    # The harness and the benchmark wrapper read durations as the C++ loader
    # does: "1.5s", "250ms", "2m"; a bare config number is milliseconds.
    from omnirelay.benchmark import _seconds
    from omnirelay.harness.stack import _duration_s

    assert omnirelay.parse_duration("1.5s") == timedelta(milliseconds=1500)
    assert _seconds("250ms") == pytest.approx(0.25)
    assert _seconds("500us") == pytest.approx(0.0005)  # a unit only the C++ parser knew
    assert _duration_s("2m", 1.0) == pytest.approx(120.0)
    assert _duration_s(1500, 1.0) == pytest.approx(1.5)
    assert _duration_s("nan", 1.0) == 1.0
    with pytest.raises(errors.InvalidArgument):
        omnirelay.parse_duration("99999999999999999999h")
    assert omnirelay.parse_host_port("https://[::1]:8443/x") == ("https", "::1", 8443, "/x")
    assert omnirelay.parse_host_port("127.0.0.1:0") == ("", "127.0.0.1", 0, "/")
    with pytest.raises(errors.InvalidArgument) as error:
        omnirelay.parse_host_port("host:65536")
    assert "out of range" in str(error.value)


def test_state_lives_under_xdg_directories(monkeypatch, tmp_path):
    from omnirelay.harness.stack import state_dir

    monkeypatch.delenv("OMNIRELAY_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert state_dir() == tmp_path / "state" / "omnirelay"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir() == tmp_path / ".local" / "state" / "omnirelay"
