"""Mesh membership from Python: the ``omnirelay mesh`` verb, helpers that read
a node's gossip table and role map over its admin endpoints, and the
deterministic simulator (``omnirelay._core.mesh.Simulator``).

* ``omnirelay mesh peers --admin HOST:PORT [--json]`` prints the members a
  node sees (``GET /omnirelay/control/peers``): id, roles, region, zone,
  state, incarnation, last seen, labels.
* :func:`peers` / :func:`role_map` fetch the same documents for scenarios.
* :class:`Simulator` runs hundreds to thousands of simulated members from a
  seed (docs/mesh.md, "The simulator").
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

from omnirelay.cli import register_verb

STATES = ("alive", "suspect", "dead", "left")


def _get_json(admin: str, path: str, timeout: float = 3.0) -> Any:
    url = admin if admin.startswith("http") else f"http://{admin}"
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout) as response:
        return json.loads(response.read().decode())


def peers(admin: str, timeout: float = 3.0) -> Dict[str, Any]:
    """``GET /omnirelay/control/peers`` of the node whose admin endpoint is ``admin``."""
    return _get_json(admin, "/omnirelay/control/peers", timeout)


def role_map(admin: str, timeout: float = 3.0) -> Dict[str, Any]:
    """The ``mesh`` section of ``/omnirelay/introspect``: ``{"self": ..., "roleMap": {...}}``."""
    return _get_json(admin, "/omnirelay/introspect", timeout).get("mesh") or {}


def states(table: Dict[str, Any]) -> Dict[str, str]:
    """``{member id: state}`` of a peers document."""
    return {m["id"]: m["state"] for m in table.get("members", [])}


def format_table(table: Dict[str, Any]) -> str:
    header = ("ID", "STATE", "INC", "ROLES", "REGION", "ZONE", "ADDRESS", "LAST SEEN", "LABELS")
    rows = [header]
    for m in table.get("members", []):
        labels = ",".join(f"{k}={v}" for k, v in sorted((m.get("labels") or {}).items()))
        rows.append((m["id"], m["state"], str(m["incarnation"]), ",".join(m.get("roles") or []),
                     m.get("region", ""), m.get("zone", ""), m.get("address", ""), m.get("lastSeen", ""),
                     labels))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(len(header))).rstrip() for r in rows]
    self_ = table.get("self") or {}
    counts = table.get("counts") or {}
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)
    lines.append(f"self {self_.get('id')} (incarnation {self_.get('incarnation')}) in cluster "
                 f"{table.get('cluster')}: {summary}")
    if table.get("refusal"):
        lines.append(f"join refused: {table['refusal']}")
    return "\n".join(lines)


# `omnirelay mesh SUBVERB ...`: one verb, one table. Membership adds `peers`
# here; leadership (omnirelay.harness.leadership) adds `leaders` and `promote`.
MESH_SUBVERBS: Dict[str, Tuple[str, Callable[[List[str]], int]]] = {}


def _peers_verb(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="omnirelay mesh peers",
                                     description="The members a node sees (its /omnirelay/control/peers).")
    parser.add_argument("--admin", required=True, help="admin endpoint HOST:PORT of the node to ask")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of a table")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        table = peers(args.admin, args.timeout)
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        print(f"omnirelay mesh peers: {args.admin}: HTTP {error.code}: {body}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"omnirelay mesh peers: {args.admin}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


MESH_SUBVERBS["peers"] = ("the members a node sees: omnirelay mesh peers --admin HOST:PORT [--json]",
                          _peers_verb)


@register_verb("mesh", "mesh membership and leadership: peers, leaders, promote")
def mesh_verb(argv: List[str]) -> int:
    if not argv or argv[0] not in MESH_SUBVERBS:
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        print("usage: omnirelay mesh {" + ",".join(sorted(MESH_SUBVERBS)) + "} ...", file=stream)
        for name, (help_text, _) in sorted(MESH_SUBVERBS.items()):
            print(f"  {name:<10}{help_text}", file=stream)
        return 0 if stream is sys.stdout else 2
    return MESH_SUBVERBS[argv[0]][1](argv[1:])


def Simulator(nodes: int, seed: int = 1, profile: str = "lan", loss: float = 0.0,
              min_latency_ms: float = 0.5, max_latency_ms: float = 2.0,
              converged_start: bool = True):  # noqa: N802 (a factory named like the class it returns)
    """A deterministic simulated cluster (C++): ``run_for(s)``, ``crash(i)``,
    ``partition(a, b)``, ``heal()``, ``measure_failure(i)``, ``measure_join()``,
    ``converged()``, ``totals()``, ``false_deaths``. Same seed, same run."""
    from omnirelay._core import mesh as _mesh

    return _mesh.Simulator(nodes, seed=seed, profile=profile, loss=loss, min_latency_ms=min_latency_ms,
                           max_latency_ms=max_latency_ms, converged_start=converged_start)


__all__ = ["MESH_SUBVERBS", "STATES", "Simulator", "format_table", "mesh_verb", "peers", "role_map", "states"]
