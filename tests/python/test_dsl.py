"""Given/When/Then DSL: steps logged with timestamps, verdicts, metric
assertions (counter deltas, gauges, histogram percentiles from Prometheus
text), the op history (ok/fail/info), golden-file snapshots (fail on a
difference, update with the flag), and the benchmark result wrapper."""

import json
import math
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnirelay import errors
from omnirelay.benchmark import BenchmarkError, BenchmarkResult, benchmark_argv, run_benchmark
from omnirelay.harness.metrics import MetricNotFound, MetricsSnapshot, delta
from omnirelay.scenario import (History, Scenario, assert_golden, expect_counter_delta, expect_gauge,
                                expect_percentile, run_scenario)

PROM_BEFORE = """\
# HELP omnirelay_peer_pool_exhausted_total Picks that found every peer busy
# TYPE omnirelay_peer_pool_exhausted_total counter
omnirelay_peer_pool_exhausted_total{outbound="analytics"} 3
omnirelay_peer_lease_rejected_total{peer="b1",reason="busy"} 10
omnirelay_peer_lease_rejected_total{peer="b2",reason="busy"} 5
# TYPE omnirelay_outbound_inflight gauge
omnirelay_outbound_inflight{outbound="analytics"} 7
# TYPE omnirelay_rpc_latency_seconds histogram
omnirelay_rpc_latency_seconds_bucket{le="0.01"} 0
omnirelay_rpc_latency_seconds_bucket{le="0.1"} 0
omnirelay_rpc_latency_seconds_bucket{le="1"} 0
omnirelay_rpc_latency_seconds_bucket{le="+Inf"} 0
omnirelay_rpc_latency_seconds_sum 0
omnirelay_rpc_latency_seconds_count 0
"""

PROM_AFTER = """\
# TYPE omnirelay_peer_pool_exhausted_total counter
omnirelay_peer_pool_exhausted_total{outbound="analytics"} 3
omnirelay_peer_lease_rejected_total{peer="b1",reason="busy"} 25
omnirelay_peer_lease_rejected_total{peer="b2",reason="busy"} 9
omnirelay_peer_lease_rejected_total{peer="b3",reason="busy"} 4
# TYPE omnirelay_outbound_inflight gauge
omnirelay_outbound_inflight{outbound="analytics"} 2
# TYPE omnirelay_rpc_latency_seconds histogram
omnirelay_rpc_latency_seconds_bucket{le="0.01"} 50
omnirelay_rpc_latency_seconds_bucket{le="0.1"} 90
omnirelay_rpc_latency_seconds_bucket{le="1"} 100
omnirelay_rpc_latency_seconds_bucket{le="+Inf"} 100
omnirelay_rpc_latency_seconds_sum 4.2
omnirelay_rpc_latency_seconds_count 100
weird_name{path="/a\\"b",x="1"} NaN
"""


@pytest.fixture
def snaps():
    return MetricsSnapshot.parse(PROM_BEFORE, node="gw"), MetricsSnapshot.parse(PROM_AFTER, node="gw")


# -- metrics --------------------------------------------------------------------------------------

def test_parse_and_lookup_by_dotted_name(snaps):
    before, after = snaps
    assert before.types["omnirelay_peer_pool_exhausted_total"] == "counter"
    assert after.value("omnirelay.peer.pool_exhausted") == 3
    assert after.value("omnirelay.peer.lease_rejected", reason="busy") == 38
    assert after.value("omnirelay.peer.lease_rejected", peer="b3") == 4
    assert after.series("weird_name")[0].labels["path"] == '/a"b'
    assert math.isnan(after.value("weird_name"))
    with pytest.raises(MetricNotFound):
        after.value("omnirelay.nope")
    assert after.value("omnirelay.nope", default=0.0) == 0.0


def test_counter_deltas(snaps):
    before, after = snaps
    assert delta(before, after, "omnirelay.peer.lease_rejected", peer="b1") == 15
    assert delta(before, after, "omnirelay.peer.lease_rejected", peer="b3") == 4  # missing before = 0
    assert expect_counter_delta(before, after, "omnirelay.peer.pool_exhausted", equals=0) == 0
    with pytest.raises(AssertionError, match="expected >= 100"):
        expect_counter_delta(before, after, "omnirelay.peer.lease_rejected", at_least=100)
    # Per-node maps (cluster.snapshot_metrics results) sum over nodes.
    assert expect_counter_delta({"gw": before}, {"gw": after, "gw2": after},
                                "omnirelay.peer.lease_rejected", at_least=1) == 23 + 38
    with pytest.raises(AssertionError, match="went down"):
        delta(after, before, "omnirelay.peer.lease_rejected")


def test_gauges_and_percentiles(snaps):
    _, after = snaps
    assert expect_gauge(after, "omnirelay.outbound.inflight", at_most=2) == 2
    with pytest.raises(AssertionError):
        expect_gauge(after, "omnirelay.outbound.inflight", at_least=5)
    # 50 samples <= 10 ms, 40 in (10, 100] ms, 10 in (100 ms, 1 s].
    assert after.percentile("omnirelay.rpc.latency", 0.5) == pytest.approx(0.01)
    assert after.percentile("omnirelay.rpc.latency", 0.7) == pytest.approx(0.01 + 0.09 * 0.5)
    assert expect_percentile(after, "omnirelay.rpc.latency", 0.99, at_most=1.0) == pytest.approx(0.91)
    with pytest.raises(AssertionError, match="p99"):
        expect_percentile(after, "omnirelay.rpc.latency", 0.99, at_most=0.5)
    assert expect_percentile({"a": after, "b": after}, "omnirelay.rpc.latency", 0.5) == pytest.approx(0.01)


def test_parser_rejects_garbage():
    with pytest.raises(ValueError, match="line 2"):
        MetricsSnapshot.parse("ok_metric 1\nthis is { not prometheus\n")


# -- history ----------------------------------------------------------------------------------------------

def test_history_ok_fail_info(tmp_path):
    h = History()
    h.call("c1", "echo", lambda x: x, "hello")
    h.call("c1", "echo", lambda: (_ for _ in ()).throw(errors.ResourceExhausted("busy")))
    h.call("c2", "echo", lambda: (_ for _ in ()).throw(TimeoutError("slow")))
    h.call("c2", "echo", lambda: (_ for _ in ()).throw(errors.DeadlineExceeded("late")))
    with pytest.raises(KeyError):
        with h.op("c3", "read", "k") as op:
            raise KeyError("k")
    with h.op("c3", "read") as op:
        op.ok(42)
    assert h.counts() == {"ok": 2, "fail": 2, "info": 2, "invoke": 0}
    assert h.errors() == {"RESOURCE_EXHAUSTED": 1, "TimeoutError": 1, "DEADLINE_EXCEEDED": 1, "KeyError": 1}
    assert h.ops[0].result == "hello" and h.ops[0].latency_ms is not None
    h.assert_all_completed()
    with pytest.raises(AssertionError, match="DEADLINE_EXCEEDED"):
        h.assert_no_error("DEADLINE_EXCEEDED")
    with pytest.raises(AssertionError, match="outside"):
        h.assert_only_errors({"RESOURCE_EXHAUSTED"})
    with pytest.raises(AssertionError, match="ok = 2"):
        h.assert_counts(ok_at_least=3)
    h.invoke("c4", "write")
    with pytest.raises(AssertionError, match="never completed"):
        h.assert_all_completed()
    lines = h.save(tmp_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["type"] == "fail"


# -- golden files ----------------------------------------------------------------------------------------------

def test_golden_fails_on_difference_and_updates_with_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("OMNIRELAY_UPDATE_GOLDEN", raising=False)
    data = {"leader": "west", "shards": [1, 2], "pid": 1234}
    with pytest.raises(AssertionError, match="does not exist"):
        assert_golden(data, "failover.json", golden_dir=tmp_path)
    assert_golden(data, "failover.json", golden_dir=tmp_path, update=True, redact=["pid"])
    assert json.loads((tmp_path / "failover.json").read_text())["pid"] == "<redacted>"
    # Same content (pid redacted) passes; key order does not matter.
    assert_golden({"shards": [1, 2], "pid": 999, "leader": "west"}, "failover.json", golden_dir=tmp_path,
                  redact=["pid"])
    changed = {"leader": "east", "shards": [1, 2], "pid": 1}
    with pytest.raises(AssertionError, match=r'(?s)differs.*-  "leader": "west".*\+  "leader": "east"'):
        assert_golden(changed, "failover.json", golden_dir=tmp_path, redact=["pid"])
    # The documented environment flag rewrites instead of comparing.
    monkeypatch.setenv("OMNIRELAY_UPDATE_GOLDEN", "1")
    assert_golden(changed, "failover.json", golden_dir=tmp_path, redact=["pid"])
    monkeypatch.delenv("OMNIRELAY_UPDATE_GOLDEN")
    assert_golden(changed, "failover.json", golden_dir=tmp_path, redact=["pid"])


# -- scenario steps and verdicts -------------------------------------------------------------------------------------

def test_steps_are_logged_with_timestamps_and_verdict(tmp_path):
    lines = []

    def passing(s):
        with s.given("a value"):
            x = 1
        with s.when("it doubles"):
            x *= 2
            s.note(f"x={x}")
        with s.then("it is two"):
            assert x == 2

    s = run_scenario(passing, "passing", tmp_path / "p", echo=lines.append)
    assert s.verdict == "PASS"
    records = [json.loads(l) for l in (tmp_path / "p" / "steps.jsonl").read_text().splitlines()]
    ends = [r for r in records if r["event"] == "step.end"]
    assert [(r["kind"], r["status"]) for r in ends] == [("given", "passed"), ("when", "passed"), ("then", "passed")]
    assert all(r["time"].endswith("Z") and r["ts"] > 0 for r in records)
    log = (tmp_path / "p" / "steps.log").read_text()
    assert "GIVEN a value" in log and "- x=2" in log
    assert len(lines) == 3
    assert json.loads((tmp_path / "p" / "verdict.json").read_text())["verdict"] == "PASS"

    def failing(s):
        with s.given("something"):
            pass
        with s.then("a false claim"):
            assert 1 == 2, "one is not two"
        with s.then("never reached"):
            pass

    s = run_scenario(failing, "failing", tmp_path / "f")
    assert s.verdict == "FAIL"
    verdict = json.loads((tmp_path / "f" / "verdict.json").read_text())
    assert verdict["verdict"] == "FAIL" and "one is not two" in verdict["error"]
    assert [st["status"] for st in verdict["steps"]] == ["passed", "failed"]
    assert "FAIL THEN  a false claim" in s.report()


def test_eventually_is_bounded():
    with pytest.raises(AssertionError, match="not true within 0.2s"):
        Scenario.eventually(lambda: False, within_s=0.2, interval_s=0.05)
    assert Scenario.eventually(lambda: 5, within_s=0.2) == 5


def test_scale_durations(tmp_path):
    assert Scenario("x", tmp_path, scale="ci").duration(ci=5, full=600) == 5
    assert Scenario("x", tmp_path, scale="full").duration(ci=5, full=600) == 600


# -- benchmark wrapper -----------------------------------------------------------------------------------------------

REPORT = {
    "requests": 1000, "successes": 900, "failures": 100, "duration_s": 5.0, "throughput_rps": 200.0,
    "latency_ms": {"success": {"p50": 1.5, "p90": 3, "p95": 4, "p99": 9.5, "p999": 20, "max": 31},
                   "failure": {"p50": 0.2, "p90": 0.4, "p95": 0.5, "p99": 0.9, "p999": 1.0, "max": 1.2}},
    "status_counts": {"OK": 900, "RESOURCE_EXHAUSTED": 100},
}


def test_benchmark_result_from_json():
    r = BenchmarkResult.from_json(json.dumps(REPORT))
    assert (r.requests, r.successes, r.failures, r.throughput_rps) == (1000, 900, 100, 200.0)
    assert r.success.p99 == 9.5 and r.failure.max == 1.2 and r.latency_ms["success"].p999 == 20
    assert r.status_counts == {"OK": 900, "RESOURCE_EXHAUSTED": 100}
    assert r.count("DEADLINE_EXCEEDED") == 0
    assert r.to_json() == {**REPORT, "latency_ms": {k: {p: float(v) for p, v in d.items()}
                                                    for k, d in REPORT["latency_ms"].items()}}
    with pytest.raises(BenchmarkError, match="missing"):
        BenchmarkResult.from_json({"requests": 1})


def fake_binary(tmp_path, body):
    path = tmp_path / "fake-native"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_run_benchmark_passes_flags_and_parses(tmp_path):
    binary = fake_binary(tmp_path, f"""
        import json, sys
        open({str(tmp_path / 'argv.json')!r}, "w").write(json.dumps(sys.argv[1:]))
        print("warming up", file=sys.stderr)
        print(json.dumps({REPORT!r}))
    """)
    r = run_benchmark(binary=binary, transport="grpc", address=["127.0.0.1:1", "127.0.0.1:2"],
                      service="trace.Analytics", procedure="Process", concurrency=400, rps=200,
                      duration="2s", header={"x-a": "1"}, ttl=None, save_to=tmp_path / "out" / "bench.json")
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[0] == "benchmark" and argv[-1] == "--json"
    assert argv.count("--address") == 2 and "--ttl" not in argv
    assert argv[argv.index("--concurrency") + 1] == "400" and argv[argv.index("--header") + 1] == "x-a=1"
    assert r.status_counts["RESOURCE_EXHAUSTED"] == 100
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["requests"] == 1000
    assert benchmark_argv("b", deadline="2020-01-01T00:00:00Z")[2:4] == ["--deadline", "2020-01-01T00:00:00Z"]


def test_run_benchmark_failure_is_clear(tmp_path):
    binary = fake_binary(tmp_path, """
        import sys
        print("no such flag --bogus", file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(BenchmarkError, match="exited with 3") as info:
        run_benchmark(binary=binary, bogus=1)
    assert "no such flag" in info.value.stderr
