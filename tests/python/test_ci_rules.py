"""Rules that keep the test suite and the node's outputs honest:

- under ``--fail-on-skip`` (what CI passes) a skipped test or module fails;
- a live node's ``/metrics`` passes ``promtool check metrics`` (Debian's
  ``prometheus`` package), after traffic has created every family we emit.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from dataplane_support import NodeProcess, echo_request, http_request


def plugin_args():
    installed = any(ep.value.startswith("omnirelay.pytest_plugin")
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "omnirelay.pytest_plugin"]


SKIPPING_SUITE = textwrap.dedent('''
    import pytest

    def test_passes():
        assert True

    def test_skips_itself():
        pytest.skip("stub missing")

    @pytest.mark.xfail(reason="known", strict=True)
    def test_expected_failure():
        assert False
''')

SKIPPING_MODULE = textwrap.dedent('''
    import pytest
    pytest.skip("binary missing", allow_module_level=True)

    def test_never_runs():
        pass
''')


def tmp_dir(path):
    return path if path.is_dir() else path.parent


def run_suite(folder, *extra):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *plugin_args(), *extra, str(folder)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_dir(folder))


def test_fail_on_skip_turns_skipped_tests_and_modules_into_failures(tmp_path):
    (tmp_path / "test_a.py").write_text(SKIPPING_SUITE)
    (tmp_path / "test_b.py").write_text(SKIPPING_MODULE)
    relaxed = run_suite(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "2 skipped" in relaxed.stdout, relaxed.stdout
    # A skipped module is a collection error: the run fails before any test.
    strict = run_suite(tmp_path, "--fail-on-skip")
    assert strict.returncode != 0, strict.stdout + strict.stderr
    assert "skipped under --fail-on-skip (CI): Skipped: binary missing" in strict.stdout, strict.stdout
    # A skipped test fails; xfail is not a skip and stays an expected failure.
    tests_only = run_suite(tmp_path / "test_a.py", "--fail-on-skip")
    assert tests_only.returncode == 1, tests_only.stdout + tests_only.stderr
    assert "skipped under --fail-on-skip (CI): Skipped: stub missing" in tests_only.stdout, tests_only.stdout
    assert "1 failed, 1 passed, 1 xfailed" in tests_only.stdout, tests_only.stdout


def test_live_metrics_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/install-deps.sh installs Debian's prometheus"
    backend = NodeProcess(["echo", "--instance", "m1", "--grpc-address", "127.0.0.1:0",
                           "--http-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
                           "--max-concurrency", "1"], tmp_path, "backend")
    config = {"omniRelay": {
        "service": "lint",
        "inbounds": {"grpc": {"address": "127.0.0.1:0"}, "http": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "outbounds": {"echo": {"endpoints": [backend.grpc], "maxInFlightPerPeer": 1,
                               "retry": {"maxAttempts": 2, "idempotentProcedures": ["*"]}}},
        "routes": [{"prefix": "/omnirelay.echo.v1.Echo/", "outbound": "echo"}],
        "middleware": {"rateLimit": {"maxConcurrency": 50}},
    }}
    path = tmp_path / "lint.json"
    path.write_text(json.dumps(config))
    relay = NodeProcess(["serve", "--config", str(path)], tmp_path, "relay")
    try:
        # Traffic that touches every metric family: successes, a failure, a
        # busy peer, and HTTP.
        with grpc.insecure_channel(relay.grpc) as channel:
            call = channel.unary_unary("/omnirelay.echo.v1.Echo/Echo")
            for i in range(5):
                assert call(echo_request(b"x%d" % i), timeout=10)
            with pytest.raises(grpc.RpcError):
                channel.unary_unary("/nope.Svc/X")(b"", timeout=10)
        http_request("POST", f"http://{relay.http}/", b"y",
                     {"Rpc-Service": "omnirelay.echo.v1.Echo", "Rpc-Procedure": "Echo"})
        for node in (relay, backend):
            text = node.metrics()
            assert "# TYPE" in text
            lint = subprocess.run([promtool, "check", "metrics"], input=text,
                                  capture_output=True, text=True, timeout=60)
            problems = (lint.stdout + lint.stderr).strip()
            assert lint.returncode == 0 and not problems, f"{node.name}:\n{problems}"
    finally:
        relay.stop()
        backend.stop()


# -- the CI script and the repository's self-containment (issue 9, items 5 and 6) --------

REPO = Path(__file__).resolve().parents[2]


def test_ci_script_forces_the_cpp_tests_and_fails_when_ctest_finds_none(tmp_path):
    """scripts/test.sh configures the release tree with the C++ tests on (a tree
    that scripts/demo.sh configured without them would otherwise run nothing)
    and every ctest run fails when it finds no test. The second half runs
    ctest on an empty build tree with the same flag: it must fail."""
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "-B build/release" in script and "-DOMNIRELAY_BUILD_TESTS=ON" in script
    ctest_runs = [line for line in script.splitlines() if line.strip().startswith("ctest ")]
    assert len(ctest_runs) >= 3, ctest_runs  # release, ASan, TSan
    assert all("--no-tests=error" in line for line in ctest_runs), ctest_runs
    empty = tmp_path / "empty-build"
    empty.mkdir()
    result = subprocess.run(["ctest", "--test-dir", str(empty), "--no-tests=error"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr


def test_nothing_in_the_product_points_outside_the_repository():
    """The specification is summarised in docs/specification.md; code, docs,
    tests and scripts never depend on a path outside the repository."""
    offenders = []
    for folder in ("README.md", "docs", "cpp", "python", "tests", "scenarios", "scripts",
                   "topologies", "bindings", "proto"):
        root = REPO / folder
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if path == Path(__file__).resolve() or path.suffix in (".so", ".pyc"):
                continue
            try:
                text = path.read_text(errors="ignore")
            except OSError:
                continue
            if "/work/shared" in text or "shared/seeds" in text:
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    assert (REPO / "docs" / "specification.md").exists()
