"""The topology format: shipped YAML files load, the seed's shapes
(GlobalLeaderWithRegions, ShardRing, EdgeFanOut) build and survive a YAML
round trip, errors name the field, placeholders resolve (fake commands, no
native binary needed)."""

import json
import sys

import pytest
import yaml

from omnirelay.topology import (BUILDERS, Topology, TopologyBuilder, TopologyError, edge_fan_out,
                                global_leader_with_regions, shard_ring)


def walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
    else:
        yield value


def test_three_node_yaml():
    t = Topology.load("three-node")
    assert [n.name for n in t.nodes] == ["node-1", "node-2", "node-3"]
    assert t.regions == ["east", "west"]
    assert len(t.links) == 6 and all(l.proxy and l.port == "admin" for l in t.links)


def test_contention_yaml():
    t = Topology.load("contention")
    echo = t.nodes_with(role="echo")
    assert [n.name for n in echo] == ["backend-1", "backend-2", "backend-3"]
    for n in echo:
        args = n.launch_args()
        assert args[0] == "echo" and "--max-concurrency" in args
        assert int(args[args.index("--max-concurrency") + 1]) > 0
        assert "grpc" in n.ports
    gateway = t.node("gateway")
    outbound = gateway.config["omniRelay"]["outbounds"]["analytics"]
    assert outbound["peerChooser"] == "fewest-pending"
    assert outbound["endpoints"] == ["${all.echo.grpc}"]
    assert not any(isinstance(x, str) and ("ttl" in x.lower() or "deadline" in x.lower())
                   for x in walk(gateway.config)), "the contention config must carry no TTL/deadline"
    assert [n.name for n in t.start_order()][-1] == "gateway"
    assert {l.name for l in t.links} == {f"gateway->backend-{i}" for i in (1, 2, 3)}
    assert all(l.proxy for l in t.links)


def roundtrip(t):
    again = Topology.from_yaml(t.to_yaml())
    assert again.to_dict() == t.to_dict()
    return again


def test_global_leader_with_regions():
    t = roundtrip(global_leader_with_regions(regions=("east", "west", "north"), replicas_per_region=2).build())
    assert len(t.nodes_with(role="global-leader")) == 1
    assert {n.region for n in t.nodes_with(role="regional-leader")} == {"east", "west", "north"}
    assert len(t.nodes_with(role="replica")) == 6
    assert all(n.labels["leader"] == f"{n.region}-leader" for n in t.nodes_with(role="replica"))
    # Every regional leader talks to the global leader, both ways.
    for region in ("east", "west", "north"):
        t.link(f"{region}-leader->global-leader")
        t.link(f"global-leader->{region}-leader")


def test_shard_ring():
    t = roundtrip(shard_ring(shards=5, replicas=3).build())
    assert [n.labels["shard"] for n in t.nodes] == ["0", "1", "2", "3", "4"]
    # Each shard replicates to its next two successors around the ring.
    assert {(l.source, l.target) for l in t.links if l.source == "shard-4"} == {("shard-4", "shard-0"),
                                                                                ("shard-4", "shard-1")}
    assert len(t.links) == 10


def test_edge_fan_out():
    t = roundtrip(edge_fan_out(edges=2, backends=4).build())
    assert len(t.nodes_with(role="edge")) == 2 and len(t.nodes_with(role="backend")) == 4
    assert len(t.links) == 8
    assert [n.role for n in t.start_order()][:4] == ["backend"] * 4


def test_every_builder_builds():
    for name, builder in BUILDERS.items():
        assert builder().build().name == name


def test_builder_with_methods():
    b = TopologyBuilder("custom")
    b.node("a", role="leader").with_label("tier", "core").with_restart("on-failure", 2).with_ready(timeout_s=5)
    b.node("b").with_config({"peer": "${nodes.a.grpc}"})
    t = b.with_link("b", "a", proxy=True).build()
    assert t.node("a").labels == {"tier": "core"} and t.node("a").restart.max_restarts == 2
    assert "grpc" in t.node("a").ports  # added because b's config references it


@pytest.mark.parametrize("doc, field", [
    ({"name": "x", "nodes": [{"name": "a"}, {"name": "a"}]}, "nodes[1].name"),
    ({"name": "x", "nodes": [{"name": "a"}], "links": [{"from": "a", "to": "zz"}]}, "links[0].to"),
    ({"name": "x", "nodes": [{"name": "a", "restart": {"policy": "sometimes"}}]}, "nodes[0].restart.policy"),
    ({"name": "x", "nodes": [{"name": "a", "config": {"p": "${nodes.ghost.grpc}"}}]}, "unknown node 'ghost'"),
    ({"name": "x", "nodes": [{"name": "a", "colour": "red"}]}, "nodes[0]: unknown key"),
    ({"name": "x", "nodes": [{"role": "a"}]}, "nodes[0].name"),
    ({"name": "x", "bogus": 1, "nodes": [{"name": "a"}]}, "unknown key"),
])
def test_errors_name_the_field(doc, field):
    with pytest.raises(TopologyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Topology.from_dict(doc)


def test_unknown_topology_name():
    with pytest.raises(TopologyError, match="not found"):
        Topology.load("no-such-topology")


def test_placeholders_resolve_with_fake_commands(tmp_path):
    """Nodes launched through `command:`; the harness renders config, args
    and env. A proxied link redirects ${nodes.X.P} to the proxy."""
    from omnirelay.harness import Cluster

    doc = {
        "name": "placeholders",
        "defaults": {"command": sys.executable, "ready": {"readyFile": False, "http": None, "timeout": 5}},
        "nodes": [
            {"name": "b1", "role": "backend", "ports": ["grpc"], "args": ["-c", "import time; time.sleep(30)"]},
            {"name": "b2", "role": "backend", "ports": ["grpc"], "args": ["-c", "import time; time.sleep(30)"]},
            {"name": "gw", "role": "gateway", "labels": {"tier": "edge"},
             "args": ["-c", "import time; time.sleep(30)", "${self.name}", "${self.admin.port}"],
             "env": {"UPSTREAM": "${direct.b1.grpc}"},
             "config": {"self": "${self.grpc}", "tier": "${self.labels.tier}",
                        "backends": ["${all.backend.grpc}"], "b1": "${nodes.b1.grpc}",
                        "direct": "${direct.b1.grpc}", "url": "${nodes.b2.grpc.url}"}},
        ],
        "links": [{"from": "gw", "to": "b1", "port": "grpc", "proxy": True}],
    }
    with Cluster(Topology.from_dict(doc), tmp_path / "art") as cluster:
        gw, b1, b2 = cluster["gw"], cluster["b1"], cluster["b2"]
        config = yaml.safe_load(gw.config_file.read_text())
        proxy = cluster.link("gw->b1").address
        assert config["self"] == gw.address("grpc")
        assert config["tier"] == "edge"
        assert config["b1"] == proxy != b1.address("grpc")
        assert config["direct"] == b1.address("grpc")
        assert config["backends"] == [proxy, b2.address("grpc")]
        assert config["url"] == f"http://{b2.address('grpc')}"
        assert gw.argv[-2:] == ["gw", str(gw.ports["admin"])]
        assert gw.env["UPSTREAM"] == b1.address("grpc")
        endpoints = json.loads((tmp_path / "art" / "endpoints.json").read_text())
        assert endpoints["links"]["gw->b1"]["proxied"] is True
        # Starting order: link targets first.
        started = [e["node"] for e in cluster.events() if e["event"] == "node.started"]
        assert started.index("b1") < started.index("gw")


# -- mesh identity (issue 10) ------------------------------------------------------------

def test_builders_put_mesh_identity_into_each_node_config():
    t = roundtrip(global_leader_with_regions(regions=("east", "west"), replicas_per_region=1).build())
    for node in t.nodes:
        mesh = node.config["omniRelay"]["mesh"]
        assert mesh["nodeId"] == "${self.name}"
        assert mesh["roles"] == [node.role] and mesh["region"] == node.region and mesh["zone"] == node.zone
        assert mesh["labels"] == node.labels
        assert node.config["omniRelay"]["inbounds"]["grpc"]["address"] == "${self.grpc}"
        others = {n.name for n in t.nodes} - {node.name}
        assert set(mesh["peerAddresses"]) == others
        assert mesh["seeds"] == [f"${{nodes.{m}.grpc}}" for m in [n.name for n in t.nodes] if m != node.name]
    # Region isolation must cut gossip: every ordered pair has a proxied grpc link.
    pairs = {(l.source, l.target) for l in t.links if l.port == "grpc" and l.proxy}
    names = [n.name for n in t.nodes]
    assert pairs == {(a, b) for a in names for b in names if a != b}
    role_map = t.declared_role_map()
    assert role_map["global-leader"] == {"roles": ["global-leader"], "region": "east", "zone": "east-a",
                                         "labels": {"tier": "global"}}
    assert role_map["west-replica-1"]["roles"] == ["replica"]


def test_every_builder_and_three_node_yaml_are_mesh_members():
    for name, builder in BUILDERS.items():
        t = builder().build()
        assert all("mesh" in n.config["omniRelay"] for n in t.nodes), name
    t = Topology.load("three-node")
    assert t.node("node-3").config["omniRelay"]["mesh"]["region"] == "west"
    assert "grpc" in t.node("node-3").ports
    # The YAML keeps its six admin links (mesh.links is off).
    assert len(t.links) == 6


def test_mesh_key_in_yaml_is_checked():
    with pytest.raises(TopologyError, match="mesh: unknown key"):
        Topology.from_yaml("name: x\nmesh: {profil: test}\nnodes: [{name: a}]\n")
    t = Topology.from_yaml("name: x\nmesh: {links: true}\nnodes: [{name: a}, {name: b, role: r}]\n")
    assert {(l.source, l.target) for l in t.links} == {("a", "b"), ("b", "a")}
    assert t.node("b").config["omniRelay"]["mesh"]["roles"] == ["r"]
