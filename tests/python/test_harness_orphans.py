"""No node process outlives its harness: not after a failing test, not after
the test process is killed with SIGKILL (the kernel's death signal), not
after SIGTERM (the reaper's handler), not after Ctrl-C of `omnirelay up`."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness.process import pid_alive

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover
    pytest.skip(f"needs omnirelay-native: {error}", allow_module_level=True)

HOLDER = textwrap.dedent("""
    import json, sys, time
    from omnirelay.harness import Cluster
    cluster = Cluster("three-node", sys.argv[1]).start()
    print(json.dumps([n.pid for n in cluster]), flush=True)
    time.sleep(120)
""")


def all_gone(pids, within_s=10.0):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def start_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "art")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    line = holder.stdout.readline()
    if not line:
        holder.kill()
        pytest.fail(f"holder did not start a cluster: {holder.stderr.read()}")
    pids = json.loads(line)
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    return holder, pids


def test_no_orphan_after_the_test_process_is_killed(tmp_path):
    holder, pids = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)  # no atexit, no handler: only the kernel can help
    holder.wait(timeout=10)
    assert all_gone(pids), f"orphaned nodes survived SIGKILL of the harness: {[p for p in pids if pid_alive(p)]}"


def test_no_orphan_after_sigterm(tmp_path):
    holder, pids = start_holder(tmp_path)
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=20) != 0
    assert all_gone(pids)


def plugin_args():
    installed = any(ep.value.startswith("omnirelay.pytest_plugin")
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "omnirelay.pytest_plugin"]


FAILING_TEST = textwrap.dedent("""
    import json, os

    def test_fails_with_a_cluster(cluster_factory):
        cluster = cluster_factory("three-node")
        with open(os.environ["PIDS_FILE"], "w") as f:
            json.dump([n.pid for n in cluster], f)
        assert False, "deliberate failure"
""")


def test_no_orphan_after_a_failing_test(tmp_path):
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_fail.py").write_text(FAILING_TEST)
    pids_file = tmp_path / "pids.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args(),
         "--rootdir", str(tmp_path / "suite"), "--artifacts-dir", str(tmp_path / "artifacts"),
         str(tmp_path / "suite")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PIDS_FILE": str(pids_file)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deliberate failure" in result.stdout
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 3
    assert not any(pid_alive(p) for p in pids), "a failing test left nodes running"
    # The failure keeps its artifacts and says where they are.
    assert "artifacts:" in result.stdout
    kept = list((tmp_path / "artifacts").rglob("endpoints.json"))
    assert kept, "artifacts of a failing test were removed"
