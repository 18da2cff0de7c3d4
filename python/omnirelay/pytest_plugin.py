"""pytest plugin of OmniRelay, enabled by installing the package (entry point
``pytest11``). It declares the markers OmniRelay suites use and the options
that select how scenarios run."""

from __future__ import annotations

MARKERS = {
    "chaos": "injects faults into a running cluster",
    "hyperscale": "large topologies; opt-in",
    "slow": "takes more than a few seconds",
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


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
