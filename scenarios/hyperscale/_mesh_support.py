"""Shared helpers of the hyperscale scenarios: read every node's gossip table
and role map over its admin endpoint, and save them as artifacts."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from omnirelay.mesh import peers, role_map, states


def tables(cluster: Any, names: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
    """``{node: /omnirelay/control/peers}`` of every running, unpaused node."""
    out: Dict[str, Dict[str, Any]] = {}
    for node in cluster:
        if names is not None and node.name not in names:
            continue
        if node.is_running() and not node.paused:
            out[node.name] = peers(node.admin)
    return out


def views(cluster: Any, names: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, str]]:
    """``{node: {member: state}}``."""
    return {name: states(table) for name, table in tables(cluster, names).items()}


def alive_set(view: Dict[str, str]) -> frozenset:
    return frozenset(member for member, state in view.items() if state == "alive")


def save_tables(s: Any, cluster: Any, label: str) -> Dict[str, Dict[str, Any]]:
    """Writes ``gossip/<label>/<node>.json`` and returns the tables."""
    snapshot = tables(cluster)
    for name, table in snapshot.items():
        s.save_json(f"gossip/{label}/{name}.json", table)
    return snapshot


def role_maps(cluster: Any) -> Dict[str, Dict[str, Any]]:
    """``{node: introspect's mesh section}`` of every running node."""
    return {node.name: role_map(node.admin) for node in cluster if node.is_running() and not node.paused}


def stable_role_map(observed: Dict[str, Any]) -> Dict[str, Any]:
    """The golden-comparable part of one node's role map: ids, roles,
    placement and labels (no addresses, ports, incarnations or times)."""
    return {member: {"roles": entry["roles"], "region": entry["region"], "zone": entry["zone"],
                     "labels": entry["labels"], "state": entry["state"]}
            for member, entry in sorted(observed["roleMap"].items())}
