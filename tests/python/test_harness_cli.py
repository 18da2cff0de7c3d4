"""`omnirelay up TOPOLOGY` (foreground until Ctrl-C, endpoints printed, no
orphan), `omnirelay scenario run NAME` (step log + verdict, exit code), and
the pytest plugin's fixtures/options in a pytest subprocess."""

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness.process import pid_alive

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover
    pytest.skip(f"needs omnirelay-native: {error}", allow_module_level=True)

OMNIRELAY = [sys.executable, "-m", "omnirelay"]


def test_help_lists_python_verbs():
    result = subprocess.run([*OMNIRELAY, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert re.search(r"^\s+up\s", result.stdout, re.M) and re.search(r"^\s+scenario\s", result.stdout, re.M)


def test_up_runs_until_ctrl_c_and_leaves_nothing(tmp_path):
    process = subprocess.Popen([*OMNIRELAY, "up", "three-node", "--artifacts", str(tmp_path / "up")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready;" in line:
                break
        output = "".join(lines)
        assert "ready;" in output, output + process.stderr.read() if process.poll() is not None else output
        assert re.search(r"node-1\s+node\s+east\s+\d+\s+admin=127\.0\.0\.1:\d+", output), output
        assert "node-1->node-3:admin: 127.0.0.1:" in output
        pids = [int(p) for p in re.findall(r"^node-\d\s+\S+\s+\S+\s+(\d+)", output, re.M)]
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "omnirelay up: stopped" in process.stdout.read()
        assert not any(pid_alive(p) for p in pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_up_fails_clearly(tmp_path):
    missing = subprocess.run([*OMNIRELAY, "up", "no-such-topology"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "topology 'no-such-topology' not found" in missing.stderr
    nobin = subprocess.run([*OMNIRELAY, "up", "three-node", "--artifacts", str(tmp_path / "x")],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "OMNIRELAY_NATIVE_BIN": "/nonexistent"})
    assert nobin.returncode == 1 and "OMNIRELAY_NATIVE_BIN=/nonexistent" in nobin.stderr


SCENARIO = textwrap.dedent('''
    """A node paused for a bounded window stops answering, then recovers."""
    from omnirelay.scenario import Scenario

    def scenario(s: Scenario) -> None:
        with s.given("a three-node cluster"):
            cluster = s.cluster("three-node")
        with s.when("node-2 pauses for 1 s"):
            cluster.chaos.pause("node-2", duration_s=1.0)
        with s.then("node-2 does not answer"):
            assert not cluster["node-2"].healthy(0.3)
        with s.then("node-2 answers again after its window"):
            s.eventually(lambda: cluster["node-2"].healthy(0.3), within_s=5)
        with s.then("FAIL_HERE"):
            assert "{fail}" != "yes", "asked to fail"
''')


@pytest.mark.parametrize("fail", ["no", "yes"])
def test_scenario_run_prints_steps_and_verdict(tmp_path, fail):
    (tmp_path / "scen").mkdir()
    (tmp_path / "scen" / "pause_recover.py").write_text(SCENARIO.replace("{fail}", fail))
    result = subprocess.run(
        [*OMNIRELAY, "scenario", "run", "pause_recover", "--path", str(tmp_path / "scen"),
         "--artifacts", str(tmp_path / "art")], capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ok   GIVEN a three-node cluster", out), out
    assert "WHEN  node-2 pauses for 1 s" in out
    verdict = json.loads((tmp_path / "art" / "verdict.json").read_text())
    if fail == "no":
        assert result.returncode == 0, out + result.stderr
        assert out.rstrip().endswith("verdict: PASS") and verdict["verdict"] == "PASS"
    else:
        assert result.returncode == 1
        assert "FAIL THEN  FAIL_HERE" in out and "asked to fail" in out
        assert out.rstrip().endswith("verdict: FAIL") and verdict["verdict"] == "FAIL"
    assert (tmp_path / "art" / "steps.jsonl").exists() and (tmp_path / "art" / "events.jsonl").exists()
    assert (tmp_path / "art" / "metrics" / "final").is_dir()


def test_scenario_run_unknown_name():
    result = subprocess.run([*OMNIRELAY, "scenario", "run", "nope-nope"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "scenario 'nope-nope' not found" in result.stderr


def test_scenario_list_names_each_scenario_once_from_the_repository_root():
    # From the repository root, the checkout's scenarios/ and ./scenarios are
    # one folder; each name must still appear once.
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([*OMNIRELAY, "scenario", "list"], capture_output=True, text=True, timeout=30,
                            cwd=repo)
    assert result.returncode == 0, result.stderr
    names = [line.split("\t")[0] for line in result.stdout.splitlines() if line.strip()]
    assert "contention" in names and "partition_healing" in names
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def plugin_args():
    installed = any(ep.value.startswith("omnirelay.pytest_plugin")
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "omnirelay.pytest_plugin"]


PLUGIN_SUITE = textwrap.dedent('''
    import pytest

    @pytest.mark.topology("three-node")
    def test_cluster_fixture(cluster, artifacts_dir, omnirelay_seed, omnirelay_scale):
        assert cluster["node-1"].healthy(1.0)
        assert cluster.artifacts_dir.parent == artifacts_dir
        assert omnirelay_seed == 77 and omnirelay_scale == "full"

    def test_scenario_fixture(scenario, golden, tmp_path):
        with scenario.given("a cluster"):
            c = scenario.cluster("three-node")
        with scenario.then("its shape matches the golden file"):
            shape = {n.name: {"role": n.role, "region": n.region} for n in c}
            golden(shape, "shape.json", golden_dir=tmp_path)

    def pause_scenario(s):
        with s.given("a cluster"):
            c = s.cluster("three-node")
        with s.when("node-3 pauses briefly"):
            c.chaos.pause("node-3", duration_s=0.5)
        with s.then("it recovers"):
            s.eventually(lambda: c["node-3"].healthy(0.3), within_s=5)

    @pytest.mark.chaos
    @pytest.mark.slow
    @pytest.mark.hyperscale
    def test_run_scenario_fixture_and_markers(run_scenario):
        assert run_scenario(pause_scenario).verdict == "PASS"
''')


def test_pytest_plugin_fixtures_and_options(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_plugin.py").write_text(PLUGIN_SUITE)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--strict-markers", *plugin_args(),
            "--rootdir", str(suite), "--artifacts-dir", str(tmp_path / "artifacts"), "--chaos-seed", "77",
            "--scale", "full", str(suite)]
    # --update-golden writes the (missing) golden file instead of failing.
    result = subprocess.run([*base, "--update-golden", "--keep-artifacts"], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    kept = list((tmp_path / "artifacts").rglob("verdict.json"))
    assert kept and json.loads(kept[0].read_text())["verdict"] == "PASS"
    # Passing tests' artifacts go away without --keep-artifacts.
    result = subprocess.run([*base[:-1], "-k", "cluster_fixture", str(suite)], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list((tmp_path / "artifacts").rglob("test_cluster_fixture/*"))
    help_text = subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    for option in ("--topology", "--keep-artifacts", "--scale", "--update-golden", "--chaos-seed"):
        assert option in help_text
