"""GlobalClusterBootstrap_DefaultTopology (seed 002, hyperscale suite).

``GlobalLeaderWithRegions`` (one global leader, a regional leader per region,
replicas under each) comes up as real ``omnirelay serve`` processes whose
identity (roles, region, zone, labels) the builder put into each node's
``omniRelay.mesh`` config. Then:

1. every node's ``/omnirelay/introspect`` role map equals the builder's
   declared map (and the golden file ``golden/global_cluster_bootstrap-<scale>.json`` beside this file);
2. every node sees every other node alive in its gossip table.

Artifacts: ``role_map.json`` (every node's observed map), ``declared_role_map.json``,
``gossip/bootstrap/<node>.json``. CI runs 2 regions x 1 replica (5 nodes);
``--scale full`` the seed's shape with 3 replicas per region (9 nodes).

Run: ``pytest scenarios/hyperscale -m hyperscale`` or
``omnirelay scenario run global_cluster_bootstrap [--scale full]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mesh_support import role_maps, save_tables, stable_role_map, views  # noqa: E402

from omnirelay.scenario import Scenario, assert_golden  # noqa: E402
from omnirelay.topology import global_leader_with_regions  # noqa: E402

pytestmark = pytest.mark.hyperscale
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def scenario(s: Scenario) -> None:
    replicas = 3 if s.scale == "full" else 1
    topology = global_leader_with_regions(regions=("east", "west"), replicas_per_region=replicas).build()
    names = sorted(n.name for n in topology.nodes)
    declared = topology.declared_role_map()
    s.save_json("declared_role_map.json", declared)

    with s.given(f"GlobalLeaderWithRegions as {len(names)} real processes (2 regions, {replicas} replica(s) each)"):
        cluster = s.cluster(topology)

    with s.then("every node sees every other node alive"):
        def all_alive():
            seen = views(cluster)
            ok = len(seen) == len(names) and all(
                sorted(view) == names and set(view.values()) == {"alive"} for view in seen.values())
            return seen if ok else None
        s.eventually(all_alive, within_s=s.duration(ci=30, full=60), interval_s=0.25,
                     message="gossip did not converge to every node alive")
        save_tables(s, cluster, "bootstrap")

    with s.then("every node's introspect role map equals the builder's declared map"):
        observed = role_maps(cluster)
        s.save_json("role_map.json", observed)
        expected = {name: {**declared[name], "state": "alive"} for name in names}
        for node, section in observed.items():
            assert section["self"]["id"] == node
            assert section["self"]["roles"] == declared[node]["roles"]
            assert stable_role_map(section) == expected, f"{node}'s role map differs from the declared map"
        golden = stable_role_map(observed[names[0]])
        s.save_json(f"snapshots/global_cluster_bootstrap-{s.scale}.json", golden)
        assert_golden(golden, f"global_cluster_bootstrap-{s.scale}.json", golden_dir=GOLDEN_DIR,
                      update=s.update_golden)
        s.note(f"{len(observed)} role maps agree with the builder: "
               + ", ".join(f"{n}={'/'.join(declared[n]['roles'])}@{declared[n]['region']}" for n in names))


def test_global_cluster_bootstrap(run_scenario):
    run_scenario(scenario)
