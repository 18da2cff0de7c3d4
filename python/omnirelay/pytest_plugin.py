"""pytest plugin of OmniRelay, enabled by installing the package (entry point
``pytest11``). It declares the markers OmniRelay suites use, the options that
select how scenarios run, and the fixtures that build clusters:

=====================  ===========================================================
``artifacts_root``     session folder for artifacts (``--artifacts-dir``, env
                       ``OMNIRELAY_ARTIFACTS``, default ``<rootdir>/artifacts``)
``artifacts_dir``      this test's folder; removed after a pass unless
                       ``--keep-artifacts``; kept (and its path printed) on failure
``omnirelay_seed``     the seed of fault decisions (``--chaos-seed``, default 0)
``omnirelay_scale``    ``"ci"`` or ``"full"`` (``--scale``)
``cluster_factory``    ``cluster_factory("three-node", **Cluster kwargs)`` starts a
                       cluster in ``artifacts_dir``; every one is stopped at teardown
``cluster``            a cluster of ``@pytest.mark.topology("NAME")`` or ``--topology``
``scenario``           a :class:`omnirelay.scenario.Scenario` in ``artifacts_dir``;
                       ``scenario.cluster(...)`` starts clusters, closed at teardown
``golden``             ``golden(data, "name.json", redact=[...])`` compares with
                       ``tests/golden/`` (``--update-golden`` rewrites)
=====================  ===========================================================

``--fail-on-skip`` (CI): every skipped test or module becomes a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

MARKERS = {
    "chaos": "injects faults into a running cluster",
    "hyperscale": "the hyperscale suite (scenarios/hyperscale/): small scale by default, --scale full for the seed's sizes",
    "slow": "takes more than a few seconds",
    "topology(name)": "topology the `cluster` fixture starts (name in topologies/, path, or builder)",
}


def pytest_addoption(parser):
    group = parser.getgroup("omnirelay")
    group.addoption("--topology", default=None, help="topology name or file for cluster fixtures")
    group.addoption(
        "--keep-artifacts",
        action="store_true",
        default=False,
        help="keep per-scenario artifacts (logs, metric snapshots) even when tests pass",
    )
    group.addoption(
        "--scale",
        default="ci",
        choices=["ci", "full"],
        help="scenario durations: 'ci' (scaled down) or 'full' (the seeds' durations)",
    )
    group.addoption("--artifacts-dir", default=None,
                    help="root folder of per-test artifacts (default $OMNIRELAY_ARTIFACTS or <rootdir>/artifacts)")
    group.addoption("--chaos-seed", type=int, default=None,
                    help="seed of every fault decision (default $OMNIRELAY_SEED or 0); printed on failure")
    group.addoption("--update-golden", action="store_true", default=False,
                    help="rewrite golden files instead of comparing (same as OMNIRELAY_UPDATE_GOLDEN=1)")
    group.addoption("--fail-on-skip", action="store_true", default=False,
                    help="CI mode: a skipped test or module is a failure (a missing binary or stub "
                         "must be found, not skipped); scripts/test.sh passes it")


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if config.getoption("--update-golden", default=False):
        os.environ["OMNIRELAY_UPDATE_GOLDEN"] = "1"
    # An installed package (tests run from elsewhere) still finds the checkout's
    # topologies/ and scenarios/ under the rootdir.
    root = Path(str(config.rootdir))
    for env, folder in (("OMNIRELAY_TOPOLOGY_PATH", "topologies"), ("OMNIRELAY_SCENARIO_PATH", "scenarios")):
        if (root / folder).is_dir():
            paths = [p for p in os.environ.get(env, "").split(os.pathsep) if p]
            if str(root / folder) not in paths:
                os.environ[env] = os.pathsep.join([*paths, str(root / folder)])


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip(report, config) -> None:
    """Turns a skip into a failure under --fail-on-skip (xfail stays xfail)."""
    if report.skipped and not hasattr(report, "wasxfail") and config.getoption("--fail-on-skip"):
        report.outcome = "failed"
        report.longrepr = f"skipped under --fail-on-skip (CI): {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result(), collector.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    _fail_skip(report, item.config)
    setattr(item, f"omnirelay_rep_{report.when}", report)
    if report.failed and report.when == "call":
        path = getattr(item, "omnirelay_artifacts", None)
        seed = getattr(item, "omnirelay_seed", None)
        if path is not None:
            report.sections.append(("omnirelay", f"artifacts: {path}\nseed: {seed}"))


def _failed(item) -> bool:
    return any(getattr(getattr(item, f"omnirelay_rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def artifacts_root(request) -> Path:
    option = request.config.getoption("--artifacts-dir")
    root = Path(option or os.environ.get("OMNIRELAY_ARTIFACTS") or Path(str(request.config.rootdir)) / "artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


@pytest.fixture
def artifacts_dir(request, artifacts_root) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])[:120]
    module = Path(str(request.node.fspath)).stem
    path = artifacts_root / module / name
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    request.node.omnirelay_artifacts = path
    yield path
    if not _failed(request.node) and not request.config.getoption("--keep-artifacts"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def omnirelay_seed(request) -> int:
    option = request.config.getoption("--chaos-seed")
    seed = option if option is not None else int(os.environ.get("OMNIRELAY_SEED", "0"))
    request.node.omnirelay_seed = seed
    return seed


@pytest.fixture
def omnirelay_scale(request) -> str:
    return request.config.getoption("--scale")


@pytest.fixture
def cluster_factory(artifacts_dir, omnirelay_seed):
    from omnirelay.harness.cluster import Cluster

    clusters = []

    def factory(topology, name=None, **kwargs):
        sub = artifacts_dir / (name or f"cluster-{len(clusters) + 1}")
        kwargs.setdefault("seed", omnirelay_seed)
        cluster = Cluster(topology, sub, **kwargs)
        clusters.append(cluster)
        return cluster.start()

    yield factory
    for cluster in reversed(clusters):
        cluster.stop()


@pytest.fixture
def cluster(request, cluster_factory):
    marker = request.node.get_closest_marker("topology")
    topology = marker.args[0] if marker and marker.args else request.config.getoption("--topology")
    if topology is None:
        pytest.skip("no topology: use @pytest.mark.topology(NAME) or --topology NAME")
    kwargs = dict(marker.kwargs) if marker else {}
    return cluster_factory(topology, **kwargs)


@pytest.fixture
def scenario(request, artifacts_dir, omnirelay_seed, omnirelay_scale):
    from omnirelay.scenario import Scenario

    s = Scenario(request.node.name, artifacts_dir, scale=omnirelay_scale, seed=omnirelay_seed,
                 update_golden=True if request.config.getoption("--update-golden") else None)
    yield s
    if _failed(request.node):
        s.failed = True
        s.error = s.error or "test failed (see the pytest report)"
    s.close(None)


@pytest.fixture
def golden(request):
    from omnirelay.scenario import assert_golden

    update = True if request.config.getoption("--update-golden") else None

    def check(data, name, **kwargs):
        kwargs.setdefault("update", update)
        return assert_golden(data, name, **kwargs)

    return check


@pytest.fixture
def run_scenario(scenario):
    """``def test_x(run_scenario): run_scenario(scenario)`` — runs a scenario
    module's ``scenario(s)`` function in the ``scenario`` fixture's Scenario;
    a failing step fails the test (its exception propagates)."""

    def run(fn):
        fn(scenario)
        return scenario

    return run
