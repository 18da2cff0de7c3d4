"""Seeded fault schedules: the same seed, targets and parameters always give
the same list of faults (FoundationDB/TigerBeetle's rule: one seed replays a
run). Generation is pure (no clock, no I/O); :meth:`ChaosController.run_schedule`
executes a schedule against a cluster.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: kinds a schedule may draw; link kinds need a proxied link, node kinds a node.
LINK_KINDS = ("latency", "blackhole", "reset", "bandwidth")
NODE_KINDS = ("pause", "kill", "stop")
#: ``packet-loss`` needs a netns topology (real loss in the region's namespaces).
REGION_KINDS = ("isolate-region", "packet-loss")


@dataclass(frozen=True)
class ScheduledFault:
    at_s: float          # offset from the schedule's start
    kind: str
    target: str          # link name, node name or region
    duration_s: float    # bounded window; heals after it
    params: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class FaultSchedule:
    seed: int
    faults: List[ScheduledFault]

    @classmethod
    def generate(cls, seed: int, duration_s: float, *, links: Sequence[str] = (), nodes: Sequence[str] = (),
                 regions: Sequence[str] = (), kinds: Sequence[str] = ("latency", "blackhole", "pause"),
                 mean_interval_s: float = 2.0, window_s: Tuple[float, float] = (0.5, 2.0),
                 latency_ms: Tuple[float, float] = (20.0, 200.0), max_faults: int = 1000,
                 loss_probability: Tuple[float, float] = (0.02, 0.2)) -> "FaultSchedule":
        """Faults arrive as a Poisson process (exponential gaps, mean
        ``mean_interval_s``) over ``duration_s``; each picks a kind among
        ``kinds`` whose target list is non-empty, a target, and a window
        uniform in ``window_s`` (clipped so it ends by ``duration_s``)."""
        if duration_s <= 0 or mean_interval_s <= 0:
            raise ValueError("duration_s and mean_interval_s must be > 0")
        if not 0 < window_s[0] <= window_s[1]:
            raise ValueError("window_s must be (min, max) with 0 < min <= max")
        rng = random.Random(seed)
        pools = {k: sorted(links) for k in LINK_KINDS}
        pools.update({k: sorted(nodes) for k in NODE_KINDS})
        pools.update({k: sorted(regions) for k in REGION_KINDS})
        usable = [k for k in kinds if pools.get(k)]
        unknown = [k for k in kinds if k not in pools]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}")
        faults: List[ScheduledFault] = []
        t = 0.0
        while usable and len(faults) < max_faults:
            t += rng.expovariate(1.0 / mean_interval_s)
            if t >= duration_s:
                break
            kind = usable[rng.randrange(len(usable))]
            target = pools[kind][rng.randrange(len(pools[kind]))]
            window = min(rng.uniform(*window_s), max(0.05, duration_s - t))
            params: Dict[str, float] = {}
            if kind == "latency":
                params = {"latency_ms": round(rng.uniform(*latency_ms), 1),
                          "jitter_ms": round(rng.uniform(0, latency_ms[0] / 2), 1)}
            elif kind == "bandwidth":
                params = {"rate_bps": float(rng.choice([16_384, 65_536, 262_144]))}
            elif kind == "packet-loss":
                params = {"probability": round(rng.uniform(*loss_probability), 3)}
            faults.append(ScheduledFault(round(t, 3), kind, target, round(window, 3), params))
        return cls(seed, faults)

    def to_json(self) -> Dict[str, Any]:
        return {"seed": self.seed, "faults": [f.to_json() for f in self.faults]}

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: equal fingerprints, equal schedules."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.faults)
