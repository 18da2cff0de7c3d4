"""RegionalDegrade_GeoFallback (seed 002, hyperscale suite).

Two regions of backends, west and east, every node in its own network
namespace (``netns: node``). A west edge node has a geo-affine outbound
(``outbounds.backends.geo``, docs/peers.md) over every backend, and routes the
sharded service ``users.v1.Users`` (namespace ``users``, owners = the backends,
docs/shards.md) by ``rpc-shard-key``.

The west region degrades: 150 ms on the edge's links to the west backends
(the user-space fault proxy) AND real packet loss on the west backends'
namespaces (iptables' ``statistic`` match: TCP retransmits, slower calls).
Then:

* geo calls move to east within a bounded time (the latency signal crosses
  its threshold), while probes keep measuring west;
* ``omnirelay.geo.mode`` is 1 (fallback), ``omnirelay.geo.transitions`` counts
  exactly one entry into fallback, ``omnirelay.geo.routed`` rises for east;
* the edges' shard route has geo stickiness (``shards.namespaces.users.geo``,
  docs/shards.md "Geo stickiness"; its gRPC links to the west backends carry
  the same latency): while west is degraded, calls for west-owned shards with
  an east replica are answered in east by that replica (``rpc-shard-role:
  replica``, ``rpc-shard-served-by`` an east node named in the map's
  ``replicas``; 1 in ``probeEvery`` stays on the west owner as the chooser's
  probe), east-owned shards and west-owned shards without an east replica stay
  on their owner; ``omnirelay.geo.*{outbound=shards.users}`` show one trip out;
  failures stay bounded;
* after the heal, calls come back to west after the hold period and stay there:
  exactly one return (``transitions{local}`` = 1), no flapping — for the geo
  outbound and for the shard route (every shard call on its west owner again).

Artifacts: ``shards/before|after/<node>.json`` (every node's shard map),
``observations.json`` (per call: phase, who answered, region, latency, error),
``figures.json`` (times to move/return for the geo outbound and the shard
route, shard calls by replica/owner per category, shares, latencies, measured
loss, retransmits),
``netns.json`` (namespaces, addresses), ``metrics/<phase>/``.

CI: 2 + 2 backends, one edge, 16 shards, ~3 s degraded. ``--scale full``:
4 + 4 backends, two edges, 64 shards, 20 s degraded.

Run: ``pytest scenarios/hyperscale -m hyperscale`` or
``omnirelay scenario run regional_degrade_geo_fallback [--scale full]``.
Needs root (network namespaces); CI runs as root.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List

import grpc
import pytest

from omnirelay.chaos import netns
from omnirelay.harness.leadership import apply_leadership
from omnirelay.scenario import Scenario
from omnirelay.shards import ECHO_SERVICE, SHARDED_SERVICE, owners, resolve, shards
from omnirelay.topology import TopologyBuilder

pytestmark = [pytest.mark.hyperscale]

GEO_METHOD = "/httpecho.Svc/Echo"
SHARD_METHOD = f"/{SHARDED_SERVICE}/Echo"
LATENCY_MS = 150
THRESHOLD_MS = 60
LOSS = 0.10
HOLD_S = 3.0
PROBE_EVERY = 5
SHARD_GEO = {"latencyThresholdMs": THRESHOLD_MS, "holdMs": int(HOLD_S * 1000), "evaluateEveryMs": 100,
             "probeEvery": PROBE_EVERY, "minSamples": 5}


def identity(b):
    return b


def topology(per_region: int, edges: int, shard_count: int):
    west = [f"west-{i}" for i in range(1, per_region + 1)]
    east = [f"east-{i}" for i in range(1, per_region + 1)]
    edge_names = [f"edge-west-{i}" for i in range(1, edges + 1)]
    b = TopologyBuilder("regional-degrade", f"{per_region}+{per_region} backends in west/east, "
                                            f"{edges} west edge(s), every node in its own network namespace")
    for name in west + east:
        region = name.split("-")[0]
        mesh: Dict[str, Any] = {}
        if region == "west":
            # The edges reach the west backends' HTTP data port through the
            # fault proxy (latency); gossip and shard forwarding run on gRPC.
            # The proxy listens on the bridge address, so every edge dials the
            # one advertised proxy of each west backend.
            mesh = {"mesh": {"advertiseEndpoints": {"http": f"${{links.{edge_names[0]}->{name}:http}}"}}}
        b.node(name, role="backend", region=region, zone=f"{region}-a").with_port("http").with_config(
            {"omniRelay": {
                "inbounds": {"http": {"address": "${self.http}"}},
                "echo": {"instance": name, "procedures": ["httpecho.Svc/Echo"]},
                **mesh}})
    for name in west:
        b.with_link(edge_names[0], name, port="http", proxy=True)
        # Shard forwarding (and the edge's gossip) to the west backends runs on
        # gRPC through a proxied link per edge, so the degrade's latency reaches
        # the shard route's geo chooser as it reaches the outbound's.
        for edge in edge_names:
            b.with_link(edge, name, port="grpc", proxy=True)
    for edge in edge_names:
        b.node(edge, role="edge", region="west", zone="west-b").with_config({"omniRelay": {
            "outbounds": {"backends": {
                "transport": "http",
                "mesh": {"role": "backend"},
                "geo": {"latencyThresholdMs": THRESHOLD_MS, "holdMs": int(HOLD_S * 1000),
                        "evaluateEveryMs": 100, "probeEvery": PROBE_EVERY, "minSamples": 5,
                        "innerChooser": "round-robin"},
            }},
            "routes": [{"prefix": "/httpecho.Svc/", "outbound": "backends"}],
        }})
    t = b.with_netns("node").with_mesh_identity(profile="test").build()
    # The shard map's writer sits in east (the healthy region); everyone else observes.
    scopes = {n.name: [] for n in t.nodes}
    scopes["east-1"] = [("global", 0)]
    scopes["east-2"] = [("global", 1)]
    apply_leadership(t, scopes, store="sqlite")
    for node in t.nodes:
        config = node.config.setdefault("omniRelay", {})
        users: Dict[str, Any] = {
            "shards": shard_count, "strategy": "rendezvous", "replicas": 1, "ownerRole": "backend",
            "service": SHARDED_SERVICE, "localService": ECHO_SERVICE,
        }
        if node.name in edge_names:
            # Geo stickiness (docs/shards.md "Geo stickiness"): the edges' shard
            # route leaves west with the same thresholds as their outbound.
            users["geo"] = dict(SHARD_GEO)
        config["shards"] = {"reconcileInterval": "250ms", "namespaces": {"users": users}}
    return t, west, east, edge_names


class Client:
    """One west client on one edge: geo calls and shard calls, every outcome
    recorded as an observation."""

    def __init__(self, name: str, address: str, observations: List[Dict[str, Any]]) -> None:
        self.name = name
        self.channel = grpc.insecure_channel(address)
        self.geo = self.channel.unary_unary(GEO_METHOD, request_serializer=identity,
                                            response_deserializer=identity)
        self.sharded = self.channel.unary_unary(SHARD_METHOD, request_serializer=identity,
                                                response_deserializer=identity)
        self.observations = observations

    def _observe(self, phase: str, kind: str, fn, **fields: Any) -> Dict[str, Any]:
        start = time.monotonic()
        record: Dict[str, Any] = {"client": self.name, "phase": phase, "kind": kind, **fields}
        try:
            _, call = fn()
            headers = dict(call.initial_metadata())
            instance = headers.get("x-omnirelay-instance", "")
            record.update(ok=True, instance=instance, region=instance.split("-")[0],
                          shardOwner=headers.get("rpc-shard-owner"), shardVersion=headers.get("rpc-shard-version"),
                          servedBy=headers.get("rpc-shard-served-by"), role=headers.get("rpc-shard-role"))
        except grpc.RpcError as error:
            record.update(ok=False, error=f"{error.code().name}: {error.details()}")
        record["latencyMs"] = round((time.monotonic() - start) * 1000, 2)
        self.observations.append(record)
        return record

    def geo_burst(self, phase: str, n: int) -> List[Dict[str, Any]]:
        return [self._observe(phase, "geo", lambda: self.geo.with_call(b"", timeout=5)) for _ in range(n)]

    def shard_call(self, phase: str, key: str) -> Dict[str, Any]:
        return self._observe(phase, "shard", lambda: self.sharded.with_call(
            key.encode(), metadata=[("rpc-shard-key", key)], timeout=10), key=key)

    def close(self) -> None:
        self.channel.close()


def east_share(records: List[Dict[str, Any]]) -> float:
    served = [r for r in records if r["ok"]]
    return sum(1 for r in served if r["region"] == "east") / max(1, len(served))


def summary(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    ok = [r for r in records if r["ok"]]
    lat = sorted(r["latencyMs"] for r in ok)
    by_region: Dict[str, int] = {}
    for r in ok:
        by_region[r["region"]] = by_region.get(r["region"], 0) + 1
    return {"calls": len(records), "failed": len(records) - len(ok), "byRegion": by_region,
            "p50Ms": round(statistics.median(lat), 2) if lat else None,
            "p99Ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None}


def shard_docs(cluster) -> Dict[str, Any]:
    return {n.name: shards(n.admin) for n in cluster if n.is_running()}


def converged(cluster, backends: List[str]) -> bool:
    docs = shard_docs(cluster)
    first = docs[next(iter(docs))]["namespaces"][0]
    if first["version"] < 1 or sorted(x["id"] for x in first["nodes"]) != sorted(backends):
        return False
    return all(d["namespaces"][0]["version"] == first["version"] and
               owners(d, "users") == owners(docs[next(iter(docs))], "users") and
               all(x["routable"] for x in d["namespaces"][0]["nodes"]) for d in docs.values())


def placement(document: Dict[str, Any]) -> List[List[str]]:
    """The replicas of every shard of `users` (index = shard id)."""
    ns = next(n for n in document["namespaces"] if n["namespace"] == "users")
    return [list(x.get("replicas") or []) for x in ns["shards"]]


def geo_peers(node) -> List[str]:
    outbound = node.get_json("/omnirelay/introspect")["outbounds"]["backends"]
    return sorted(p["id"] for p in outbound["peers"])


def scenario(s: Scenario) -> None:
    if netns.available() is not None:
        pytest.skip(f"RegionalDegrade_GeoFallback needs network namespaces: {netns.available()}")
    full = s.scale == "full"
    per_region, edges, shard_count = (4, 2, 64) if full else (2, 1, 16)
    degraded_s = s.duration(ci=3, full=20)
    keys_per_round = 24 if full else 12
    topo, west, east, edge_names = topology(per_region, edges, shard_count)
    backends = west + east
    observations: List[Dict[str, Any]] = []
    figures: Dict[str, Any] = {"scale": s.scale, "west": west, "east": east, "edges": edge_names,
                               "shards": shard_count, "latencyMs": LATENCY_MS, "lossProbability": LOSS,
                               "thresholdMs": THRESHOLD_MS, "holdSeconds": HOLD_S}

    with s.given(f"{len(backends)} backends in west/east and {edges} west edge(s), each in its own namespace"):
        cluster = s.cluster(topo)
        s.eventually(lambda: all(geo_peers(cluster[e]) == sorted(backends) for e in edge_names),
                     within_s=30, interval_s=0.2, message="the edges never saw every backend")
        s.eventually(lambda: converged(cluster, backends), within_s=30, interval_s=0.2,
                     message="the shard map never converged on every node")
        before = shard_docs(cluster)
        for name, doc in before.items():
            s.save_json(f"shards/before/{name}.json", doc)
        owner_of = owners(before[edge_names[0]], "users")
        replicas_of = placement(before[edge_names[0]])
        version_before = before[edge_names[0]]["namespaces"][0]["version"]
        west_owned = sum(1 for o in owner_of if o in west)
        figures.update(mapVersionBefore=version_before, westOwnedShards=west_owned,
                       westOwnedWithEastReplica=sum(1 for i, o in enumerate(owner_of)
                                                    if o in west and any(r in east for r in replicas_of[i])))
        clients = [Client(e, cluster[e].address("grpc"), observations) for e in edge_names]

    shard_ids: Dict[str, int] = {}

    def shard_of(key: str) -> int:
        if key not in shard_ids:
            shard_ids[key] = resolve(cluster[edge_names[0]].admin, "users", key)["shard"]
        return shard_ids[key]

    def category(shard: int) -> str:
        """`sticky`: west owner with an east replica (moves to the replica in
        fallback); `westOnly`: west owner, no east replica (stays on the owner);
        `east`: east owner (its owner is in the chosen region)."""
        if owner_of[shard] in east:
            return "east"
        return "sticky" if any(r in east for r in replicas_of[shard]) else "westOnly"

    # Keys chosen so every category is called (a fixed key list may miss one
    # at 16 shards); tenant-0.. first, then more until each has its quota.
    # Few west-only keys: in fallback they are the slow calls (the degraded west owner).
    quota = {"sticky": keys_per_round // 2, "westOnly": keys_per_round // 6, "east": keys_per_round // 3}
    keys: List[str] = []
    have = {c: 0 for c in quota}
    for i in range(600):
        key = f"tenant-{i}"
        c = category(shard_of(key))
        if have[c] < quota[c]:
            have[c] += 1
            keys.append(key)
        if have == quota:
            break
    assert have["sticky"] > 0 and have["east"] > 0, ("no key for a category", have, replicas_of)
    figures["shardKeys"] = {c: [k for k in keys if category(shard_of(k)) == c] for c in quota}

    def shard_round(phase: str) -> List[Dict[str, Any]]:
        out = []
        for key in keys:
            for c in clients:
                r = c.shard_call(phase, key)
                r["shard"] = shard_of(key)
                r["category"] = category(r["shard"])
                out.append(r)
        return out

    # Placement per map version: a call is checked against the map it was
    # routed under (`rpc-shard-version`), in case membership churn under the
    # loss made the leader write a new one.
    maps: Dict[str, Any] = {str(version_before): (owner_of, replicas_of)}

    def placement_of(r: Dict[str, Any]):
        version = str(r.get("shardVersion"))
        if version not in maps:
            doc = shards(cluster[edge_names[0]].admin, "users")
            ns = next(n for n in doc["namespaces"] if n["namespace"] == "users")
            maps[str(ns["version"])] = (owners(doc, "users"), placement(doc))
        return maps.get(version, maps[str(version_before)])

    def on_east_replica(r: Dict[str, Any]) -> bool:
        return (r["ok"] and r["role"] == "replica" and r["servedBy"] == r["instance"] and
                r["servedBy"] in east and r["servedBy"] in placement_of(r)[1][r["shard"]])

    def on_owner(r: Dict[str, Any]) -> bool:
        return (r["ok"] and r["role"] == "owner" and r["servedBy"] == r["instance"] ==
                r["shardOwner"] == placement_of(r)[0][r["shard"]])

    def target(r: Dict[str, Any], region: str):
        """Where the edge's shard route sends a call when `region` is the
        chosen one (docs/shards.md "Geo stickiness"): the owner if it is
        there, else the first replica there, else the owner."""
        own, reps = placement_of(r)
        owner = own[r["shard"]]
        if owner.split("-")[0] == region:
            return owner, "owner"
        for replica in reps[r["shard"]]:
            if replica.split("-")[0] == region:
                return replica, "replica"
        return owner, "owner"

    def served_as(r: Dict[str, Any], region: str) -> bool:
        node, role = target(r, region) if r["ok"] else (None, None)
        return r["ok"] and r["role"] == role and r["servedBy"] == r["instance"] == node

    def sticky_share(records: List[Dict[str, Any]]) -> float:
        sticky = [r for r in records if r["category"] == "sticky"]
        return sum(1 for r in sticky if on_east_replica(r)) / max(1, len(sticky))

    def geo_metrics(edge: str) -> Dict[str, float]:
        m = cluster[edge].metrics()
        return geo_metrics_of(edge, "backends")

    def geo_metrics_of(edge: str, outbound: str) -> Dict[str, float]:
        # The outbound's chooser and the shard route's (`shards.users`) report
        # the same metric names; the tag tells them apart.
        m = cluster[edge].metrics()
        return {"mode": m.value("omnirelay.geo.mode", default=-1, outbound=outbound),
                "routedWest": m.value("omnirelay.geo.routed", default=0, geo_region="west", outbound=outbound),
                "routedEast": m.value("omnirelay.geo.routed", default=0, geo_region="east", outbound=outbound),
                "toFallback": m.value("omnirelay.geo.transitions", default=0, geo_mode="fallback",
                                      outbound=outbound),
                "toLocal": m.value("omnirelay.geo.transitions", default=0, geo_mode="local", outbound=outbound)}

    def shard_geo(edge: str) -> Dict[str, float]:
        return geo_metrics_of(edge, "shards.users")

    try:
        with s.then("healthy: geo calls stay in west, shard calls reach their owners"):
            healthy = [r for c in clients for r in c.geo_burst("healthy", 40)]
            assert all(r["ok"] and r["region"] == "west" for r in healthy), summary(healthy)
            for e in edge_names:
                m = geo_metrics(e)
                assert m["mode"] == 0 and m["routedEast"] == 0 and m["routedWest"] >= 40, (e, m)
            calm_shards = shard_round("healthy")
            # West is the chosen region: west owners serve, an east-owned shard
            # with a west replica is served by that replica (stickiness), else the owner.
            assert all(served_as(r, "west") for r in calm_shards), \
                [r for r in calm_shards if not served_as(r, "west")][:3]
            for e in edge_names:
                m = shard_geo(e)
                # (routedEast counts calls for east owners with no west replica.)
                assert m["mode"] == 0 and m["toFallback"] == 0, (e, m)
            s.snapshot("healthy")
            retrans_before = {w: cluster.netns.tcp_counters(w)["RetransSegs"] for w in west}

        with s.when(f"west degrades: +{LATENCY_MS} ms on the edge->west links (http and grpc) and {LOSS:.0%} packet loss "
                    f"on the west namespaces"):
            window = 120
            for w in west:
                cluster.chaos.latency(cluster.link(f"{edge_names[0]}->{w}:http"), LATENCY_MS, duration_s=window)
                for e in edge_names:
                    cluster.chaos.latency(cluster.link(e, w, port="grpc"), LATENCY_MS, duration_s=window)
            rules = cluster.chaos.packet_loss("west", LOSS, duration_s=window, roles=["backend"])
            degraded_at = time.monotonic()
            assert sorted(r.namespace for r in rules) == sorted(cluster[w].netns for w in west)

        with s.then("geo calls move to east within a bounded time; probes still measure west"):
            moved_after = shard_moved_after = None
            burst: List[Dict[str, Any]] = []
            round_: List[Dict[str, Any]] = []
            while time.monotonic() - degraded_at < 20:
                burst = [r for c in clients for r in c.geo_burst("moving", 10)]
                if east_share(burst) >= 0.7 and all(geo_metrics(e)["mode"] == 1 for e in edge_names):
                    moved_after = time.monotonic() - degraded_at
                    break
            assert moved_after is not None, f"calls never moved to east: {summary(burst)}"
            # The shard route's chooser learns from shard calls only: its time
            # counts from its first call after the degrade (resolution: one round).
            shard_started = time.monotonic()
            while time.monotonic() - shard_started < 20:
                round_ = shard_round("shardMoving")
                if sticky_share(round_) >= 0.5 and all(shard_geo(e)["mode"] == 1 for e in edge_names):
                    shard_moved_after = time.monotonic() - shard_started
                    break
            assert shard_moved_after is not None, \
                f"sticky shard calls never moved to their east replica: {[r for r in round_ if not on_east_replica(r)][:4]}"
            figures["movedToEastSeconds"] = round(moved_after, 3)
            figures["shardMovedToReplicaSeconds"] = round(shard_moved_after, 3)
            figures["udpLossWest"] = netns.measure_udp_loss(cluster.netns, west[0], count=200, gap_s=0.0005)

            degraded: List[Dict[str, Any]] = []
            degraded_shards: List[Dict[str, Any]] = []
            until = time.monotonic() + degraded_s
            rounds = 0
            # At least 3 shard rounds: the chooser's probe (1 in probeEvery
            # picks) lands on other keys each round, so shares are stable.
            while time.monotonic() < until or rounds < 3:
                degraded += [r for c in clients for r in c.geo_burst("degraded", 20)]
                degraded_shards += shard_round("degraded")
                rounds += 1
            assert east_share(degraded) >= 0.7, summary(degraded)
            for e in edge_names:
                m = geo_metrics(e)
                assert m["mode"] == 1 and m["toFallback"] == 1 and m["toLocal"] == 0, (e, m)
                assert m["routedEast"] >= 0.6 * len([r for r in degraded if r["client"] == e]), (e, m)
            s.snapshot("degraded")
            retrans_after = {w: cluster.netns.tcp_counters(w)["RetransSegs"] for w in west}
            figures["westRetransmits"] = {w: retrans_after[w] - retrans_before[w] for w in west}
            # The loss is real: the west namespaces retransmitted TCP segments.
            assert sum(figures["westRetransmits"].values()) > 0, figures["westRetransmits"]
            loss = figures["udpLossWest"]["lossRatio"]
            expected = 1 - (1 - LOSS) ** 2
            assert expected - 0.12 <= loss <= expected + 0.12, figures["udpLossWest"]

        with s.then("shard-keyed calls keep to the shard: west-owned shards with an east replica are served "
                    "by that replica, the others by their owner"):
            mid = shard_docs(cluster)
            ok = [r for r in degraded_shards if r["ok"]]
            failed = [r for r in degraded_shards if not r["ok"]]
            assert len(failed) <= max(1, len(degraded_shards) // 20), failed[:5]
            # Never a node outside the shard: the owner, or (geo stickiness) a replica.
            elsewhere = [r for r in ok if not (served_as(r, "east") or served_as(r, "west"))]
            assert not elsewhere, elsewhere[:5]
            version_mid = mid[edge_names[0]]["namespaces"][0]["version"]
            figures["mapVersionDegraded"] = version_mid
            for e in edge_names:
                m = shard_geo(e)
                assert m["mode"] == 1 and m["toFallback"] == 1 and m["toLocal"] == 0, (e, m)
            by_category = {c: [r for r in ok if r["category"] == c] for c in quota}
            # East-owned shards: the owner is in the chosen region, so it serves
            # (the chooser's probes, 1 in probeEvery, go where west as the chosen
            # region sends them: a west replica if there is one).
            owner_share = sum(1 for r in by_category["east"] if on_owner(r)) / max(1, len(by_category["east"]))
            assert owner_share >= 0.5, summary(by_category["east"])
            # Probes (served where west as the chosen region sends them, not where
            # east does) stay near 1 in probeEvery of all shard calls.
            probes = [r for r in ok if served_as(r, "west") and not served_as(r, "east")]
            assert len(probes) <= len(ok) / PROBE_EVERY + 2 * max(1, len(clients)), (len(probes), len(ok))
            figures["shardProbeCallsDegraded"] = len(probes)
            assert all(on_owner(r) or served_as(r, "west") for r in by_category["east"]), \
                [r for r in by_category["east"] if not (on_owner(r) or served_as(r, "west"))][:3]
            # West-owned, east replica: the replica serves, except the chooser's
            # probes (1 in probeEvery picks stays local and reaches the owner).
            assert by_category["sticky"] and sticky_share(by_category["sticky"]) >= 0.5, \
                summary(by_category["sticky"])
            assert all(on_east_replica(r) or on_owner(r) for r in by_category["sticky"])
            # West-owned, no east replica: nobody in east holds it, the owner serves (slower).
            assert all(on_owner(r) for r in by_category["westOnly"])
            if version_mid == version_before:
                # Membership held through the loss: the map did not change, so
                # the owners are the ones before, and west owners still served.
                west_served = [r for r in ok if r["region"] == "west"]
                assert west_owned == 0 or west_served, "no west-owned shard was served in west"
                figures["westShardCallsDuringDegrade"] = len(west_served)
            figures["shardCallsDegraded"] = summary(degraded_shards)
            figures["shardCallsDegradedByRole"] = {
                c: {"calls": len([r for r in degraded_shards if r["category"] == c]),
                    "byReplica": sum(1 for r in by_category[c] if on_east_replica(r)),
                    "byOwner": sum(1 for r in by_category[c] if on_owner(r)),
                    "failed": sum(1 for r in failed if r["category"] == c)} for c in quota}

        with s.when("the west region heals"):
            for w in west:
                cluster.chaos.heal_link(cluster.link(f"{edge_names[0]}->{w}:http"))
                for e in edge_names:
                    cluster.chaos.heal_link(cluster.link(e, w, port="grpc"))
            cluster.chaos.heal_loss(rules)
            healed_at = time.monotonic()
            assert all(cluster.netns.loss_rules_installed(w) == [] for w in west)

        with s.then(f"geo calls return to west after the {HOLD_S:g}s hold, once, and stay"):
            returned_after = shard_returned_after = None
            while time.monotonic() - healed_at < 30 and (returned_after is None or shard_returned_after is None):
                if returned_after is None:
                    burst = [r for c in clients for r in c.geo_burst("returning", 10)]
                    if burst and all(r["ok"] and r["region"] == "west" for r in burst) and \
                            all(geo_metrics(e)["mode"] == 0 for e in edge_names):
                        returned_after = time.monotonic() - healed_at
                if shard_returned_after is None:
                    round_ = shard_round("shardReturning")
                    if all(served_as(r, "west") for r in round_) and \
                            all(shard_geo(e)["mode"] == 0 for e in edge_names):
                        shard_returned_after = time.monotonic() - healed_at
                time.sleep(0.05)  # a steady trickle while the hold runs, not a flood
            assert returned_after is not None, f"calls never came back to west: {summary(burst)}"
            assert returned_after >= HOLD_S, returned_after
            assert shard_returned_after is not None, \
                f"shard calls never came back to their owner: {[r for r in round_ if not served_as(r, 'west')][:4]}"
            assert shard_returned_after >= HOLD_S, shard_returned_after
            figures["returnedToWestSeconds"] = round(returned_after, 3)
            figures["shardReturnedToOwnerSeconds"] = round(shard_returned_after, 3)
            after = [r for c in clients for r in c.geo_burst("after", 40)]
            assert all(r["ok"] and r["region"] == "west" for r in after), summary(after)
            for e in edge_names:
                m = geo_metrics(e)
                # Hysteresis: exactly one trip out and one back for the whole run.
                assert m["mode"] == 0 and m["toFallback"] == 1 and m["toLocal"] == 1, (e, m)
                figures.setdefault("geoMetrics", {})[e] = m
            after_shards = shard_round("after")
            # Back to healthy routing: every call where west as the chosen region
            # sends it (sticky shards on their west owner); no flapping: exactly
            # one trip out and one back.
            assert all(served_as(r, "west") for r in after_shards), \
                [r for r in after_shards if not served_as(r, "west")][:3]
            assert all(on_owner(r) for r in after_shards if r["category"] == "sticky")
            for e in edge_names:
                m = shard_geo(e)
                assert m["mode"] == 0 and m["toFallback"] == 1 and m["toLocal"] == 1, (e, m)
                figures.setdefault("shardGeoMetrics", {})[e] = m
            s.snapshot("after")
            after_docs = shard_docs(cluster)
            for name, doc in after_docs.items():
                s.save_json(f"shards/after/{name}.json", doc)
            figures["mapVersionAfter"] = after_docs[edge_names[0]]["namespaces"][0]["version"]
            figures["shardOwnersChanged"] = sum(
                1 for a, b in zip(owner_of, owners(after_docs[edge_names[0]], "users")) if a != b)
    finally:
        for c in clients:
            c.close()
        for phase in ("healthy", "moving", "degraded", "returning", "after"):
            figures.setdefault("geoCalls", {})[phase] = summary(
                [r for r in observations if r["phase"] == phase and r["kind"] == "geo"])
        for phase in ("healthy", "shardMoving", "degraded", "shardReturning", "after"):
            figures.setdefault("shardCalls", {})[phase] = summary(
                [r for r in observations if r["phase"] == phase and r["kind"] == "shard"])
        figures["shardCallsFailed"] = sum(1 for r in observations if r["kind"] == "shard" and not r["ok"])
        s.save_json("observations.json", observations)
        s.save_json("figures.json", figures)
    s.note(f"moved to east in {figures['movedToEastSeconds']}s, back to west {figures['returnedToWestSeconds']}s "
           f"after heal; UDP loss west {figures['udpLossWest']['lossRatio']}; degraded geo calls "
           f"{figures['geoCalls']['degraded']}; shard calls {figures['shardCallsDegraded']}; shard route to the "
           f"east replica in {figures['shardMovedToReplicaSeconds']}s, back to the owner "
           f"{figures['shardReturnedToOwnerSeconds']}s after heal; by role {figures['shardCallsDegradedByRole']}")


def test_regional_degrade_geo_fallback(run_scenario):
    run_scenario(scenario)
