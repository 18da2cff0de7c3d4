"""Python face of ``omnirelay benchmark`` (implemented in C++): runs
``omnirelay-native benchmark ... --json`` as a subprocess and returns a
:class:`BenchmarkResult`.

    result = run_benchmark(address=["127.0.0.1:25001"], service="trace.Analytics",
                           procedure="Process", concurrency=400, rps=200, duration="10s")
    assert result.status_counts.get("DEADLINE_EXCEEDED", 0) == 0
    print(result.success.p99, result.throughput_rps)

The JSON document (``--json``) has exactly this shape::

    {"requests": N, "successes": N, "failures": N, "duration_s": F, "throughput_rps": F,
     "latency_ms": {"success": {"p50","p90","p95","p99","p999","max"},
                    "failure": {...same keys...}},
     "status_counts": {"OK": N, "RESOURCE_EXHAUSTED": N, ...}}
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from omnirelay._core import parse_duration
from omnirelay._native import find_native_binary

PERCENTILES = ("p50", "p90", "p95", "p99", "p999", "max")


class BenchmarkError(RuntimeError):
    def __init__(self, message: str, returncode: Optional[int] = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles in milliseconds."""

    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    p999: float = 0.0
    max: float = 0.0

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]], where: str) -> "LatencySummary":
        data = data or {}
        try:
            return cls(**{k: float(data.get(k, 0.0) or 0.0) for k in PERCENTILES})
        except (TypeError, ValueError) as error:
            raise BenchmarkError(f"benchmark JSON: {where}: {error}") from None

    def to_json(self) -> Dict[str, float]:
        return {k: getattr(self, k) for k in PERCENTILES}


@dataclass(frozen=True)
class BenchmarkResult:
    requests: int
    successes: int
    failures: int
    duration_s: float
    throughput_rps: float
    success: LatencySummary
    failure: LatencySummary
    status_counts: Dict[str, int] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def latency_ms(self) -> Dict[str, LatencySummary]:
        return {"success": self.success, "failure": self.failure}

    def count(self, status: str) -> int:
        """Count of one status code name (``"RESOURCE_EXHAUSTED"``; 0 if absent)."""
        return int(self.status_counts.get(status, 0))

    @classmethod
    def from_json(cls, data: Union[str, Mapping[str, Any]]) -> "BenchmarkResult":
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as error:
                raise BenchmarkError(f"benchmark output is not JSON: {error}") from None
        if not isinstance(data, Mapping):
            raise BenchmarkError("benchmark JSON: expected an object")
        missing = [k for k in ("requests", "successes", "failures", "throughput_rps", "latency_ms",
                               "status_counts") if k not in data]
        if missing:
            raise BenchmarkError(f"benchmark JSON: missing field(s) {missing}")
        latency = data["latency_ms"] or {}
        return cls(
            requests=int(data["requests"]),
            successes=int(data["successes"]),
            failures=int(data["failures"]),
            duration_s=float(data.get("duration_s", 0.0)),
            throughput_rps=float(data["throughput_rps"]),
            success=LatencySummary.from_json(latency.get("success"), "latency_ms.success"),
            failure=LatencySummary.from_json(latency.get("failure"), "latency_ms.failure"),
            status_counts={str(k): int(v) for k, v in (data["status_counts"] or {}).items()},
            raw=dict(data),
        )

    def to_json(self) -> Dict[str, Any]:
        return {
            "requests": self.requests, "successes": self.successes, "failures": self.failures,
            "duration_s": self.duration_s, "throughput_rps": self.throughput_rps,
            "latency_ms": {"success": self.success.to_json(), "failure": self.failure.to_json()},
            "status_counts": dict(self.status_counts),
        }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def benchmark_argv(binary: Union[str, Path], **options: Any) -> List[str]:
    """``omnirelay-native benchmark`` argv from keyword options: ``address=[...]``
    repeats ``--address``; ``header={"k": "v"}`` gives ``--header k=v``;
    ``True`` is a bare flag; ``None``/``False`` are left out. ``--json`` is added."""
    argv = [str(binary), "benchmark"]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = _flag(key)
        if value is True:
            argv.append(flag)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                argv += [flag, f"{k}={v}"]
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    if "--json" not in argv:
        argv.append("--json")
    return argv


def run_benchmark(*, binary: Union[str, Path, None] = None, timeout_s: Optional[float] = None,
                  save_to: Union[str, Path, None] = None, extra_args: Sequence[str] = (),
                  **options: Any) -> BenchmarkResult:
    """Runs the native benchmark and parses its ``--json`` report.

    ``timeout_s`` bounds the subprocess (default: 60 s plus the ``duration``
    when given in seconds); a non-zero exit raises :class:`BenchmarkError`
    with stderr attached. ``save_to`` writes the raw JSON (artifacts)."""
    binary = Path(binary) if binary is not None else find_native_binary()
    argv = benchmark_argv(binary, **options) + list(extra_args)
    if timeout_s is None:
        timeout_s = 60.0 + _seconds(options.get("duration"))
    try:
        completed = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchmarkError(f"benchmark did not finish within {timeout_s:g}s: {' '.join(argv)}") from error
    if completed.returncode != 0:
        raise BenchmarkError(
            f"benchmark exited with {completed.returncode}: {' '.join(argv)}\n{completed.stderr.strip()[-2000:]}",
            completed.returncode, completed.stderr)
    # The report is the last JSON object on stdout (progress lines go to stderr).
    text = completed.stdout.strip()
    start = text.find("{")
    if start < 0:
        raise BenchmarkError(f"benchmark printed no JSON report: {text[-500:]!r}", 0, completed.stderr)
    result = BenchmarkResult.from_json(text[start:])
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        Path(save_to).write_text(json.dumps(result.raw, indent=2, sort_keys=True))
    return result


def _seconds(value: Any) -> float:
    """A benchmark duration in seconds: numbers are seconds, text goes through
    the one duration parser (``omnirelay.parse_duration``)."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return parse_duration(str(value).strip()).total_seconds()
    except Exception:  # noqa: BLE001 - the native binary reports the bad flag itself
        return 0.0


__all__ = ["BenchmarkError", "BenchmarkResult", "LatencySummary", "benchmark_argv", "run_benchmark"]
