"""OmniRelay: an RPC mesh engine with a C++ core, driven from Python.

The public API re-exports the parts of the native core that Python users
touch directly; higher-level helpers (cluster harness, scenario DSL, chaos)
live in submodules.
"""

from __future__ import annotations

from omnirelay import errors
from omnirelay._core import (  # noqa: F401  (re-exported)
    Clock,
    LatencyHistogram,
    ManualClock,
    MetricKind,
    MetricsRegistry,
    RequestMeta,
    StatusCode,
    SystemClock,
    format_timestamp,
    get_log_level,
    parse_duration,
    parse_host_port,
    parse_timestamp,
    set_log_file,
    set_log_level,
    status_code_name,
    status_from_http,
    status_to_http,
)
from omnirelay.errors import OmniRelayError  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "Clock",
    "LatencyHistogram",
    "ManualClock",
    "MetricKind",
    "MetricsRegistry",
    "OmniRelayError",
    "RequestMeta",
    "StatusCode",
    "SystemClock",
    "errors",
    "format_timestamp",
    "get_log_level",
    "parse_duration",
    "parse_host_port",
    "parse_timestamp",
    "set_log_file",
    "set_log_level",
    "status_code_name",
    "status_from_http",
    "status_to_http",
]
