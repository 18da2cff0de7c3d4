"""The replication failure drills (docs/replication.md "Failure drills"), one round
each, on real processes: a replication hub, queue nodes with deterministic stores, mesh
members, the chaos fault proxy. Each ``run_*_round(directory, round, items, log)``
raises AssertionError on any violated guarantee and returns a summary (lost,
duplicated, timings). The scenarios next to this file run them under pytest and as
``omnirelay scenario run peer_loss_drill|partition_drill|split_brain_drill``."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from omnirelay import errors
from omnirelay.harness.launcher import ReadyProcess
from omnirelay.harness.metrics import MetricsSnapshot
from omnirelay.resourcelease import ResourceLeaseClient


def drill_size(scale: str, ci_rounds: int = 1, ci_items: int = 120) -> tuple:
    """(rounds, items): OMNIRELAY_DRILL_ROUNDS / OMNIRELAY_DRILL_ITEMS when set, else
    the CI size, or >= 10 rounds at ``--scale full``."""
    rounds = int(os.environ.get("OMNIRELAY_DRILL_ROUNDS", "10" if scale == "full" else ci_rounds))
    items = int(os.environ.get("OMNIRELAY_DRILL_ITEMS", "400" if scale == "full" else ci_items))
    return rounds, items


def run_rounds(s: Any, run_round: Any) -> None:
    """A drill's scenario body: ``run_round(directory, round, items, log=)`` once per
    round (sized by :func:`drill_size`), each ending with 0 lost and 0 duplicated
    items; the per-round summaries go to ``rounds.json`` in the artifacts."""
    rounds, items = drill_size(s.scale)
    summaries = []
    for round_ in range(rounds):
        with s.when(f"round {round_ + 1}/{rounds}: {items} items"):
            directory = s.artifacts_dir / f"round-{round_}"
            directory.mkdir(parents=True, exist_ok=True)
            summary = run_round(directory, round_, items, log=s.note)
            assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
            summaries.append(summary)
    with s.then("every round: 0 lost, 0 duplicated"):
        s.save_json("rounds.json", summaries)
        s.note(f"{rounds} rounds x {items} items, lost 0, duplicated 0, "
               f"wall {sum(x['wall_s'] for x in summaries):.1f}s")


class NodeProcess(ReadyProcess):
    """One running node (the shared launcher): started, announced by its ready file,
    always stopped (SIGTERM, then SIGKILL)."""

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as response:
            return json.loads(response.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=10) as response:
            return response.read().decode()


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series' values whose labels include ``labels`` (0 if
    none), through the harness's one exposition parser."""
    return MetricsSnapshot.parse(text).value(name, 0.0, **labels)


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


def shard_config(tmp_path, shard):
    section = {
        "service": f"shard-{shard}",
        "inbounds": {"http": {"address": "127.0.0.1:0", "threads": 8}},
        "admin": {"address": "127.0.0.1:0"},
        "principal": {"trustedProxies": ["127.0.0.1"]},
        "resourceLease": {
            "maxLeaseWait": "1s",
            "namespaces": {"default": {"leaseDuration": "3s", "maxAttempts": 50}},
            "replication": {"kind": "sqlite", "path": str(tmp_path / f"{shard}.db"),
                            "durableAck": True, "shard": shard},
        },
    }
    path = tmp_path / f"shard-{shard}.json"
    path.write_text(json.dumps({"omniRelay": section}))
    return path


class Shard:
    def __init__(self, tmp_path, name):
        self.tmp_path, self.name = tmp_path, name
        self.cfg = shard_config(tmp_path, name)
        self.generation = 0
        self.restart()

    def restart(self):
        node = NodeProcess(["serve", "--config", str(self.cfg)], self.tmp_path,
                           f"{self.name}-{self.generation + 1}")
        # Workers notice the new generation only once the new node is in place.
        self.node = node
        self.generation += 1

    def client(self, principal):
        return ResourceLeaseClient(self.node.http, transport="http", principal=principal,
                                   timeout=3)


def run_worker(shard, name, stop, history):
    """Lease/complete until stopped; records ok and unknown completions."""
    client, generation = None, None
    while not stop.is_set():
        try:
            if generation != shard.generation:
                client, generation = shard.client(name), shard.generation
            lease = client.lease(wait=0.2)
            if lease is None:
                continue
            try:
                client.complete(lease)
                history.append(("ok", lease.request_id))
            except errors.OmniRelayError as e:
                # Refused (stale token after a restart): not completed by us.
                history.append(("fail", lease.request_id, e.error_code))
            except Exception:
                history.append(("info", lease.request_id))  # the node died mid-call
        except Exception:
            time.sleep(0.05)  # node down or restarting


def run_split_brain_round(tmp_path, round_, items, log=print):
    started = time.monotonic()
    shards = [Shard(tmp_path, "a"), Shard(tmp_path, "b")]
    try:
        ids = [f"r{round_}-{i}" for i in range(items)]
        for i, rid in enumerate(ids):
            shards[i % 2].client("producer").enqueue("job", rid, b"w", request_id=rid)
        history = []
        stop = threading.Event()
        workers = [threading.Thread(target=run_worker, args=(s, f"w-{s.name}-{k}", stop, history))
                   for s in shards for k in range(2)]
        for w in workers:
            w.start()
        # Kill shard a mid-processing, then restart it: it replays its log.
        deadline = time.monotonic() + 60
        while sum(1 for h in history if h[0] == "ok") < items // 4:
            assert time.monotonic() < deadline, "workers made no progress"
            time.sleep(0.01)
        shards[0].node.stop(signal.SIGKILL)
        time.sleep(0.2)
        shards[0].restart()

        def drained(shard):
            stats = shard.client("probe").stats()
            return int(stats.get("pending", 0)) == 0 and int(stats.get("active", 0)) == 0

        deadline = time.monotonic() + 90
        while not all(drained(s) for s in shards):
            assert time.monotonic() < deadline, ("the queues did not drain",
                                                 [s.client("probe").stats() for s in shards],
                                                 collections.Counter(h[0] for h in history))
            time.sleep(0.1)
        stop.set()
        for w in workers:
            w.join(timeout=30)

        ok = collections.Counter(h[1] for h in history if h[0] == "ok")
        twice = [rid for rid, n in ok.items() if n > 1]
        assert not twice, f"acknowledged complete twice: {twice[:5]}"
        for i, rid in enumerate(ids):
            again = shards[i % 2].client("producer").enqueue("job", rid, b"w", request_id=rid)
            assert again["duplicate"] is True and again["state"] == "completed", (rid, again)
        cp = shards[0].node.get_json("/omnirelay/control/replication/checkpoint")
        replay = cp["replay"]["default"]
        assert replay["events"] > 0
        assert cp["replicator"]["shard"] == "a"
        assert metric_total(shards[0].node.metrics(),
                            "omnirelay_resourcelease_replication_events_total",
                            lease_replay="true", shard_id="a") == replay["events"]
        # acked: completions answered ok (an item whose completion call died with the
        # node is completed too, as the re-enqueue check above proves).
        summary = {"round": round_, "items": items, "acked": len(ok), "lost": 0,
                   "duplicated": 0, "replayed_events": replay["events"],
                   "wall_s": round(time.monotonic() - started, 1)}
        log(f"split-brain drill: {summary}")
        return summary
    finally:
        for s in shards:
            s.node.stop()


# --- Peer loss ---------------------------------------------------------------------
# A queue node (replicating to a hub, durable acks, SQLite deterministic store) and
# three worker nodes, all mesh members. Worker threads lease on behalf of their node
# (the node id is their principal). kill -9 one worker node: its threads die with it,
# abandoning their leases. The queue node's lease-health tracker marks it unhealthy
# within one heartbeat window, the abandoned items expire back to pending and the
# surviving workers complete them.

PEER_LEASE_DURATION_S = 2.0
# node.cc: the mesh tracker's heartbeat grace is 50 probe intervals (test profile:
# 250 ms); the membership's dead verdict disconnects earlier.
PEER_HEARTBEAT_WINDOW_S = 12.5


def peer_worker(queue_http, node_name, index, stop, dead, history, holding, work_s=0.02):
    client = ResourceLeaseClient(queue_http, transport="http", principal=node_name, timeout=3)
    while not stop.is_set() and not dead.is_set():
        try:
            lease = client.lease(wait=0.2)
        except Exception:
            time.sleep(0.05)
            continue
        if lease is None:
            continue
        holding[(node_name, index)] = lease.request_id
        time.sleep(work_s)  # the "work"
        if dead.is_set():
            # The node was killed while this lease was held: it is never completed.
            history.append(("abandoned", lease.request_id, node_name))
            return
        try:
            client.complete(lease)
            history.append(("ok", lease.request_id, node_name))
        except errors.OmniRelayError as e:
            history.append(("fail", lease.request_id, e.error_code))
        except Exception:
            history.append(("info", lease.request_id, node_name))
        holding.pop((node_name, index), None)


def run_peer_loss_round(tmp_path, round_, items, log=print):
    from omnirelay.harness.ports import PortAllocator

    ports = PortAllocator()
    hub_port = ports.allocate()
    names = ["queue", "w1", "w2", "w3"]
    grpc_ports = {n: ports.allocate() for n in names}
    hub = NodeProcess(["serve", "--config",
                       str(write_config(tmp_path, "hub", hub_section(tmp_path, hub_port)))],
                      tmp_path, "hub")
    nodes = {}
    try:
        for n in names:
            section = {
                "service": n,
                "inbounds": {"grpc": {"address": f"127.0.0.1:{grpc_ports[n]}"}},
                "admin": {"address": "127.0.0.1:0"},
                "mesh": mesh_section(n, grpc_ports[n], grpc_ports),
            }
            if n == "queue":
                section["inbounds"]["http"] = {"address": "127.0.0.1:0", "threads": 8}
                section["principal"] = {"trustedProxies": ["127.0.0.1"]}
                section["resourceLease"] = {
                    "maxLeaseWait": "1s",
                    "namespaces": {"default": {"leaseDuration": f"{PEER_LEASE_DURATION_S}s",
                                               "maxAttempts": 50}},
                    "replication": {"kind": "grpc", "hub": f"127.0.0.1:{hub_port}",
                                    "durableAck": True,
                                    "deterministic": {"kind": "sqlite",
                                                      "path": str(tmp_path / "effects.db")}},
                }
            nodes[n] = NodeProcess(["serve", "--config",
                                    str(write_config(tmp_path, n, section))], tmp_path, n)
        queue = nodes["queue"]
        # Every worker node is known and healthy to the queue node before the load.
        wait_for(lambda: all((peer_health(queue, w) or {}).get("isHealthy")
                                for w in ("w1", "w2", "w3")), 30, "mesh converged",
                    detail=lambda: queue.get_json("/omnirelay/control/lease-health"))

        producer = ResourceLeaseClient(queue.http, transport="http", principal="producer", timeout=5)
        ids = [f"p{round_}-{i}" for i in range(items)]
        for rid in ids:
            producer.enqueue("job", rid, b"w", request_id=rid)
        history, holding, stop = [], {}, threading.Event()
        dead = {w: threading.Event() for w in ("w1", "w2", "w3")}
        threads = [threading.Thread(target=peer_worker,
                                    args=(queue.http, w, k, stop, dead[w], history, holding,
                                          # w3 works slowly so the kill lands while it
                                          # holds a lease (not between its check and
                                          # its complete).
                                          0.2 if w == "w3" else 0.02))
                   for w in ("w1", "w2", "w3") for k in range(2)]
        started = time.monotonic()
        for t in threads:
            t.start()
        wait_for(lambda: sum(1 for h in history if h[0] == "ok") >= items // 4, 60,
                    "workers made progress")
        # kill -9 w3 while it holds a lease: the node and its threads die together.
        wait_for(lambda: any(key[0] == "w3" for key in list(holding)), 30,
                    "w3 holds a lease", interval=0.001)
        dead["w3"].set()
        nodes["w3"].stop(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: (peer_health(queue, "w3") or {}).get("isHealthy") is False,
                    PEER_HEARTBEAT_WINDOW_S + 5, "w3 unhealthy in lease-health", interval=0.05,
                    detail=lambda: queue.get_json("/omnirelay/control/lease-health"))
        detected_s = time.monotonic() - killed_at
        assert detected_s <= PEER_HEARTBEAT_WINDOW_S, detected_s

        def drained():
            stats = producer.stats()
            return int(stats.get("pending", 0)) == 0 and int(stats.get("active", 0)) == 0

        wait_for(drained, 60, "the queue drained", detail=producer.stats)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        wall_s = time.monotonic() - started

        ok = assert_each_completed_once(history, ids)
        abandoned = [h[1] for h in history if h[0] == "abandoned"]
        completed_by = {h[1]: h[2] for h in history if h[0] == "ok"}
        assert abandoned, "w3 held no lease when it was killed"
        for rid in abandoned:
            assert completed_by[rid] in ("w1", "w2"), (rid, completed_by[rid])
        # The hub's log is gap-free and monotonic, holds one complete per item; the
        # deterministic store recorded each logged event exactly once.
        rows = wait_for(lambda: (lambda r: r if sum(1 for x in r if x[1] == "complete")
                                    == items else None)(hub_log(tmp_path / "hub.db")),
                           30, "hub holds every completion")
        logged = assert_gap_free(rows)
        completes = completions_per_request(rows)
        assert set(completes) == set(ids) and max(completes.values()) == 1
        wait_for(lambda: effect_count(tmp_path / "effects.db") >= logged, 30,
                    "effects recorded")
        cp = queue.get_json("/omnirelay/control/replication/checkpoint")
        durable = cp["replicator"]["queues"]["default"]["durable"]
        assert durable >= logged
        assert effect_count(tmp_path / "effects.db") == durable, cp
        summary = {"round": round_, "items": items, "completed": len(ok), "lost": 0,
                   "duplicated": 0, "abandoned": len(abandoned),
                   "unhealthy_after_s": round(detected_s, 2), "logged": logged,
                   "wall_s": round(wall_s, 1)}
        log(f"peer-loss drill: {summary}")
        return summary
    finally:
        for n in nodes.values():
            n.stop()
        hub.stop()



# --- Partition / replication lag ----------------------------------------------------
# Two nodes (queue namespaces `a` and `b`) replicate to one hub; node A's link to the
# hub runs through the chaos fault proxy. A blackhole partitions A from the hub while
# A keeps enqueuing (acknowledged at once: durableAck off) and B's workers lease and
# complete. A's replication lag (published - durable events, from
# /omnirelay/control/replication/checkpoint) rises while B's stays near 0; after the
# heal A catches up to lag 0 within a bound, and each node's deterministic store
# holds exactly the effect ids of the hub's log for its queue.

PARTITION_CATCH_UP_BOUND_S = 30.0


def event_lag(node, queue):
    q = node.get_json("/omnirelay/control/replication/checkpoint")["replicator"]["queues"][queue]
    return int(q["published"]) - int(q["durable"]), q


def effect_sequences(effects_db, queue):
    with sqlite3.connect(f"file:{effects_db}?mode=ro", uri=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT effect_id FROM deterministic_effects")]
    prefix = f"resourcelease.{queue}/seq/"
    return sorted(int(i[len(prefix):]) for i in ids if i.startswith(prefix))


def run_partition_round(tmp_path, round_, items, log=print):
    from omnirelay.chaos.proxy import FaultProxy
    from omnirelay.harness.ports import PortAllocator

    hub_port = PortAllocator().allocate()
    hub = NodeProcess(["serve", "--config",
                       str(write_config(tmp_path, "hub", hub_section(tmp_path, hub_port)))],
                      tmp_path, "hub")
    proxy = FaultProxy("a->hub", ("127.0.0.1", hub_port)).start()
    nodes = {}
    try:
        for name, hub_address, durable_ack in (("a", proxy.address, False),
                                               ("b", f"127.0.0.1:{hub_port}", True)):
            section = {
                "service": f"node-{name}",
                "inbounds": {"http": {"address": "127.0.0.1:0", "threads": 8}},
                "admin": {"address": "127.0.0.1:0"},
                "principal": {"trustedProxies": ["127.0.0.1"]},
                "resourceLease": {
                    "maxLeaseWait": "1s",
                    "namespaces": {name: {"leaseDuration": "5s", "maxAttempts": 50}},
                    "replication": {"kind": "grpc", "hub": hub_address, "durableAck": durable_ack,
                                    "deterministic": {"kind": "sqlite",
                                                      "path": str(tmp_path / f"effects-{name}.db")}},
                },
            }
            nodes[name] = NodeProcess(["serve", "--config",
                                       str(write_config(tmp_path, f"node-{name}", section))],
                                      tmp_path, f"node-{name}")
        a, b = nodes["a"], nodes["b"]
        producer_a = ResourceLeaseClient(a.http, transport="http", namespace="a",
                                         principal="producer", timeout=5)
        producer_b = ResourceLeaseClient(b.http, transport="http", namespace="b",
                                         principal="producer", timeout=5)
        b_ids = [f"b{round_}-{i}" for i in range(items)]
        for rid in b_ids:
            producer_b.enqueue("job", rid, b"w", request_id=rid)
        history, stop = [], threading.Event()

        def b_worker(k):
            client = ResourceLeaseClient(b.http, transport="http", namespace="b",
                                         principal=f"b-worker-{k}", timeout=3)
            while not stop.is_set():
                try:
                    lease = client.lease(wait=0.2)
                    if lease is None:
                        continue
                    time.sleep(0.01)
                    client.complete(lease)
                    history.append(("ok", lease.request_id))
                except errors.OmniRelayError as e:
                    history.append(("fail", None, e.error_code))
                except Exception:
                    time.sleep(0.05)

        started = time.monotonic()
        # Partition A from the hub (the window heals by itself at the latest after 120 s).
        proxy.add("blackhole", 120, name="partition")
        workers = [threading.Thread(target=b_worker, args=(k,)) for k in range(2)]
        for w in workers:
            w.start()
        a_ids = [f"a{round_}-{i}" for i in range(items)]
        for rid in a_ids:  # A keeps enqueuing through the partition
            producer_a.enqueue("job", rid, b"w", request_id=rid)
        peak, _ = wait_for(lambda: (lambda l: l if l[0] >= items else None)(event_lag(a, "a")),
                              30, "A's lag rises during the partition")
        # B is not partitioned: its log keeps up while A's does not.
        b_lag, _ = event_lag(b, "b")
        assert b_lag < items, b_lag
        partition_s = time.monotonic() - started

        proxy.remove("partition")
        healed_at = time.monotonic()
        wait_for(lambda: event_lag(a, "a")[0] == 0, PARTITION_CATCH_UP_BOUND_S,
                    "A caught up after the heal", detail=lambda: event_lag(a, "a"))
        catch_up_s = time.monotonic() - healed_at
        wait_for(lambda: len({h[1] for h in history if h[0] == "ok"}) == items, 60,
                    "B's workers completed everything")
        stop.set()
        for w in workers:
            w.join(timeout=30)
        assert_each_completed_once(history, b_ids)

        # The hub's logs and each node's deterministic store agree, event for event.
        for name, node in nodes.items():
            rows = hub_log(tmp_path / "hub.db", queue=name)
            logged = assert_gap_free(rows)
            _, position = event_lag(node, name)
            assert logged == int(position["published"]), (name, logged, position)
            wait_for(lambda: effect_sequences(tmp_path / f"effects-{name}.db", name)
                        == list(range(1, logged + 1)), 30, f"{name}'s store matches the hub log",
                        detail=lambda: len(effect_sequences(tmp_path / f"effects-{name}.db", name)))
        a_enqueued = sorted(r[2] for r in hub_log(tmp_path / "hub.db", queue="a")
                            if r[1] == "enqueue")
        assert a_enqueued == sorted(a_ids)
        summary = {"round": round_, "items": items, "peak_lag_events": peak,
                   "partition_s": round(partition_s, 2), "catch_up_s": round(catch_up_s, 2),
                   "lost": 0, "duplicated": 0, "wall_s": round(time.monotonic() - started, 1)}
        log(f"partition drill: {summary}")
        return summary
    finally:
        proxy.stop()
        for n in nodes.values():
            n.stop()
        hub.stop()

