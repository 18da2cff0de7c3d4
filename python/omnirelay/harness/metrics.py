"""Prometheus text exposition (format 0.0.4) parsed into snapshots that
scenarios assert on: counter deltas between two points in time, gauges and
histogram percentiles.

Hand-written (~100 lines) rather than ``prometheus_client.parser`` so the
harness needs no extra package; the format is line-based and stable.
Metrics may be looked up by Prometheus name or by OmniRelay's dotted name
(``omnirelay.peer.pool_exhausted``): dots become underscores and the
``_total`` / unit suffixes added by ``MetricsRegistry::PrometheusName`` are
tried in turn.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

Labels = Tuple[Tuple[str, str], ...]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_SUFFIXES = ("", "_total", "_seconds", "_milliseconds", "_ms", "_bytes", "_ratio", "_count")


class MetricNotFound(KeyError):
    pass


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    if lowered == "nan":
        return math.nan
    return float(text)


@dataclass
class Sample:
    name: str
    labels: Dict[str, str]
    value: float


@dataclass
class MetricsSnapshot:
    """All samples of one scrape, with its wall-clock time."""

    samples: List[Sample] = field(default_factory=list)
    types: Dict[str, str] = field(default_factory=dict)
    helps: Dict[str, str] = field(default_factory=dict)
    taken_at: float = field(default_factory=time.time)
    node: str = ""

    # -- parsing -------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, node: str = "", taken_at: Optional[float] = None) -> "MetricsSnapshot":
        snapshot = cls(node=node, taken_at=time.time() if taken_at is None else taken_at)
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] == "TYPE":
                    snapshot.types[parts[2]] = parts[3].strip() if len(parts) > 3 else "untyped"
                elif len(parts) >= 3 and parts[1] == "HELP":
                    snapshot.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
                continue
            match = _SAMPLE.match(line)
            if not match:
                raise ValueError(f"metrics line {lineno}: cannot parse {raw!r}")
            labels: Dict[str, str] = {}
            if match.group(3):
                for lm in _LABEL.finditer(match.group(3)):
                    labels[lm.group(1)] = _unescape(lm.group(2))
            snapshot.samples.append(Sample(match.group(1), labels, _float(match.group(4))))
        return snapshot

    # -- lookups -------------------------------------------------------------
    def names(self) -> List[str]:
        return sorted({s.name for s in self.samples})

    def resolve(self, name: str, suffixes: Iterable[str] = _SUFFIXES) -> str:
        base = name.replace(".", "_").replace("-", "_")
        present = {s.name for s in self.samples} | set(self.types)
        for suffix in suffixes:
            if base + suffix in present:
                return base + suffix
        raise MetricNotFound(f"{self.node or 'snapshot'}: no metric {name!r} (have {self.names()[:20]})")

    def series(self, name: str, **labels: str) -> List[Sample]:
        try:
            resolved = self.resolve(name)
        except MetricNotFound:
            return []
        return [s for s in self.samples
                if s.name == resolved and all(s.labels.get(k) == str(v) for k, v in labels.items())]

    def value(self, name: str, default: Optional[float] = None, **labels: str) -> float:
        """Sum of the series of ``name`` whose labels include ``labels``
        (a counter or gauge); ``default`` if none (else MetricNotFound)."""
        found = self.series(name, **labels)
        if not found:
            if default is not None:
                return default
            raise MetricNotFound(f"{self.node or 'snapshot'}: no series {name!r} with {labels}")
        return sum(s.value for s in found)

    def buckets(self, name: str, **labels: str) -> List[Tuple[float, float]]:
        """Cumulative (upper bound, count) pairs of a histogram, summed over
        the series matching ``labels``, sorted by bound."""
        base = name.replace(".", "_")
        resolved = None
        present = {s.name for s in self.samples}
        for suffix in ("", "_seconds", "_milliseconds", "_ms"):
            if base + suffix + "_bucket" in present:
                resolved = base + suffix + "_bucket"
                break
        if resolved is None:
            raise MetricNotFound(f"{self.node or 'snapshot'}: no histogram {name!r}")
        acc: Dict[float, float] = {}
        for s in self.samples:
            if s.name == resolved and all(s.labels.get(k) == str(v) for k, v in labels.items()):
                bound = _float(s.labels.get("le", "+Inf"))
                acc[bound] = acc.get(bound, 0.0) + s.value
        return sorted(acc.items())

    def percentile(self, name: str, q: float, **labels: str) -> float:
        """Prometheus ``histogram_quantile`` (linear within a bucket), ``q`` in [0, 1]."""
        return quantile_from_buckets(q, self.buckets(name, **labels))

    def to_json(self) -> Dict[str, object]:
        return {
            "node": self.node,
            "taken_at": self.taken_at,
            "types": self.types,
            "samples": [{"name": s.name, "labels": s.labels, "value": _json_float(s.value)}
                        for s in self.samples],
        }


def _json_float(v: float) -> object:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return v


def quantile_from_buckets(q: float, buckets: List[Tuple[float, float]]) -> float:
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    if not buckets:
        return math.nan
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # Prometheus returns the highest finite bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def delta(before: MetricsSnapshot, after: MetricsSnapshot, name: str, **labels: str) -> float:
    """Increase of a counter between two snapshots (a missing series counts as 0;
    a decrease, i.e. a restart, raises rather than silently lying)."""
    a = before.value(name, default=0.0, **labels)
    b = after.value(name, default=0.0, **labels)
    if b < a:
        raise AssertionError(
            f"counter {name} {labels} went down from {a} to {b} between snapshots (node restarted?)")
    return b - a


def merge(snapshots: Mapping[str, MetricsSnapshot]) -> MetricsSnapshot:
    """One snapshot holding every node's samples, each labelled ``node=NAME``."""
    out = MetricsSnapshot(node="*")
    for node, snap in snapshots.items():
        out.types.update(snap.types)
        for s in snap.samples:
            out.samples.append(Sample(s.name, {**s.labels, "node": node}, s.value))
    return out


def dump(snapshot: MetricsSnapshot) -> str:
    return json.dumps(snapshot.to_json(), indent=2, sort_keys=True)
