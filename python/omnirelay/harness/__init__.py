"""Cluster harness: runs topologies as real ``omnirelay-native`` processes on
127.0.0.1, with readiness waits, artifacts, chaos and guaranteed teardown.
See docs/harness.md.

Exports are loaded lazily so ``omnirelay serve`` (whose front-end imports the
``verbs`` submodule) does not pay for the harness it does not use."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Cluster": "omnirelay.harness.cluster",
    "HarnessError": "omnirelay.harness.cluster",
    "LinkHandle": "omnirelay.harness.cluster",
    "Node": "omnirelay.harness.cluster",
    "NodeStartError": "omnirelay.harness.cluster",
    "ReadinessTimeout": "omnirelay.harness.cluster",
    "http_get": "omnirelay.harness.cluster",
    "MetricNotFound": "omnirelay.harness.metrics",
    "MetricsSnapshot": "omnirelay.harness.metrics",
    "delta": "omnirelay.harness.metrics",
    "PortInUse": "omnirelay.harness.ports",
    "ProcessStartError": "omnirelay.harness.launcher",
    "ReadyProcess": "omnirelay.harness.launcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omnirelay.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
