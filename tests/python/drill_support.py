"""Shared pieces of the replication failure drills (docs/replication.md "Failure
drills"): node configs (hub, queue node, mesh members), the hub's log reader and
the checks every drill makes. Used by tests/python/test_replication_drills.py and by
the `omnirelay scenario run` wrappers in scenarios/drills/."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

ROUNDS = int(os.environ.get("OMNIRELAY_DRILL_ROUNDS", "1"))
ITEMS = int(os.environ.get("OMNIRELAY_DRILL_ITEMS", "120"))


def write_config(tmp_path: Path, name: str, section: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"omniRelay": section}))
    return path


def hub_section(tmp_path: Path, grpc_port: int, name: str = "hub") -> dict:
    return {
        "service": name,
        "inbounds": {"grpc": {"address": f"127.0.0.1:{grpc_port}"}},
        "admin": {"address": "127.0.0.1:0"},
        "replicationHub": {"path": str(tmp_path / f"{name}.db")},
    }


def mesh_section(name: str, grpc_port: int, members: Dict[str, int]) -> dict:
    """A mesh member (test gossip profile: 250 ms probes) with every other member
    as a seed."""
    others = {m: p for m, p in members.items() if m != name}
    return {
        "nodeId": name,
        "clusterName": "drill",
        "roles": ["node"],
        "region": "local",
        "zone": "a",
        "advertiseAddress": f"127.0.0.1:{grpc_port}",
        "seeds": [f"127.0.0.1:{p}" for p in others.values()],
        "peerAddresses": {m: f"127.0.0.1:{p}" for m, p in others.items()},
        "gossip": {"profile": "test"},
    }


def hub_log(hub_db: Path, queue: str = "default") -> List[tuple]:
    """(sequence, op, request_id, item_id) rows of one queue in the hub's SQLite log
    (only enqueues carry the request id; later ops name the item)."""
    with sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT sequence, op, request_id, json_extract(event, '$.itemId') FROM lease_events WHERE queue = ? ORDER BY sequence",
            (queue,)).fetchall()


def effect_count(effects_db: Path) -> int:
    with sqlite3.connect(f"file:{effects_db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM deterministic_effects").fetchone()[0]


def assert_gap_free(rows: Iterable[tuple]) -> int:
    sequences = [r[0] for r in rows]
    assert sequences == list(range(1, len(sequences) + 1)), (
        "hub log sequences are not 1..n", sequences[:10], len(sequences))
    return len(sequences)


def assert_each_completed_once(history: List[tuple], ids: Iterable[str]) -> collections.Counter:
    ok = collections.Counter(h[1] for h in history if h[0] == "ok")
    twice = [rid for rid, n in ok.items() if n > 1]
    assert not twice, f"acknowledged complete twice: {twice[:5]}"
    lost = [rid for rid in ids if ok[rid] != 1]
    assert not lost, f"never completed: {lost[:5]} ({len(lost)})"
    return ok


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1, detail=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, (f"timed out after {timeout}s: {what}",
                                             detail() if detail else None)
        time.sleep(interval)


def peer_health(node, peer_id: str) -> Optional[dict]:
    body = node.get_json("/omnirelay/control/lease-health")
    mesh = body.get("outbounds", {}).get("mesh") or {}
    for peer in mesh.get("peers", []):
        if peer.get("peerId") == peer_id:
            return peer
    return None


def completions_per_request(rows: Iterable[tuple]) -> collections.Counter:
    """How many `complete` events the log holds per RequestId."""
    rows = list(rows)
    request_of = {r[3]: r[2] for r in rows if r[1] == "enqueue"}
    return collections.Counter(request_of.get(r[3], f"item-{r[3]}") for r in rows
                               if r[1] == "complete")
