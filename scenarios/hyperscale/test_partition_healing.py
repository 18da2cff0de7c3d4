"""PartitionHealing_GossipConvergence (seed 002, hyperscale suite).

``GlobalLeaderWithRegions`` with every node pair's gossip going through a
fault proxy (the builder's ``mesh_links``). The harness's chaos tools isolate
the ``west`` region (every link crossing its boundary blackholed, both ways)
for a bounded window. While it lasts, each side marks the other side
suspect, then dead: the two sides' gossip tables diverge. When the window
ends, the reconnect path (push-pull with dead members) and refutation by
incarnation bring every node back to the same alive set: all nodes, none
left dead that is actually up.

Artifacts: ``gossip/before|during|after/<node>.json`` (every node's table at
each point), ``convergence.json`` (times). CI: 2 regions x 1 replica, a 6 s
window; ``--scale full``: 3 replicas per region, a 15 s window (the seed's
"pause ... for 15 seconds").

Run: ``pytest scenarios/hyperscale -m hyperscale`` or
``omnirelay scenario run partition_healing [--scale full]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mesh_support import alive_set, save_tables, views  # noqa: E402

from omnirelay.scenario import Scenario  # noqa: E402
from omnirelay.topology import global_leader_with_regions  # noqa: E402

pytestmark = [pytest.mark.hyperscale, pytest.mark.chaos]


def scenario(s: Scenario) -> None:
    replicas = 3 if s.scale == "full" else 1
    window_s = s.duration(ci=6, full=15)
    converge_bound_s = s.duration(ci=20, full=30)
    topology = global_leader_with_regions(regions=("east", "west"), replicas_per_region=replicas,
                                          mesh_links=True).build()
    everyone = frozenset(n.name for n in topology.nodes)
    west = frozenset(n.name for n in topology.nodes if n.region == "west")
    east = everyone - west
    report = {"scale": s.scale, "windowSeconds": window_s, "nodes": sorted(everyone), "west": sorted(west)}

    with s.given(f"{len(everyone)} mesh nodes in two regions, every gossip link proxied"):
        cluster = s.cluster(topology)
        s.eventually(lambda: all(alive_set(v) == everyone for v in views(cluster).values()),
                     within_s=30, interval_s=0.25, message="the cluster never converged before the fault")
        save_tables(s, cluster, "before")

    with s.when(f"the west region is isolated for {window_s:g}s"):
        hit = cluster.chaos.isolate_region("west", duration_s=window_s)
        isolated_at = time.monotonic()
        s.note(f"{len(hit)} links blackholed")
        # Every crossing pair is linked, so the cut is complete.
        assert len(hit) == 2 * len(west) * len(east), hit

    with s.then("each side marks the other suspect or dead: the gossip tables diverge"):
        def diverged():
            seen = views(cluster)
            east_ok = all(all(seen[n][w] in ("suspect", "dead") for w in west) for n in east)
            west_ok = all(all(seen[n][e] in ("suspect", "dead") for e in east) for n in west)
            return seen if east_ok and west_ok else None
        during = s.eventually(diverged, within_s=window_s - 0.5, interval_s=0.2,
                              message="the sides did not both lose each other within the window")
        report["divergedAfterSeconds"] = round(time.monotonic() - isolated_at, 3)
        save_tables(s, cluster, "during")
        # Each side still sees itself alive: two different views of the cluster.
        assert {alive_set(during[n]) for n in east} == {east}, during
        assert {alive_set(during[n]) for n in west} == {west}, during

    with s.then(f"after the window every node converges to the same alive set within {converge_bound_s:g}s"):
        heal_at = isolated_at + window_s
        time.sleep(max(0.0, heal_at - time.monotonic()))
        s.eventually(lambda: all(alive_set(v) == everyone and len(v) == len(everyone)
                                 for v in views(cluster).values()),
                     within_s=converge_bound_s, interval_s=0.2,
                     message="gossip tables did not converge after the partition healed")
        report["convergedAfterHealSeconds"] = round(time.monotonic() - heal_at, 3)
        after = save_tables(s, cluster, "after")
        dead_but_up = [(n, m["id"]) for n, t in after.items() for m in t["members"] if m["state"] != "alive"]
        assert not dead_but_up, dead_but_up
        s.save_json("convergence.json", report)
        s.note(f"diverged after {report['divergedAfterSeconds']}s, converged "
               f"{report['convergedAfterHealSeconds']}s after the heal")


def test_partition_healing(run_scenario):
    run_scenario(scenario)
