"""ResourceLease replication over real node processes: the SQLite log with durable
acknowledgements survives kill -9 (nothing acknowledged is lost, nothing is handed out
twice, completed RequestIds stay deduplicated), recovery replays the log through the
deterministic store (replayed events carry lease.replay=true), the segment-file log
recovers too, and a corrupted log stops the node from starting with the position named
(docs/replication.md)."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time

import pytest

from dataplane_support import NodeProcess, metric_total
from omnirelay import errors
from omnirelay.harness import ProcessStartError
from omnirelay.resourcelease import ResourceLeaseClient


def config(tmp_path, replication, name="repl"):
    section = {
        "service": name,
        "inbounds": {"http": {"address": "127.0.0.1:0"}},
        "admin": {"address": "127.0.0.1:0"},
        "principal": {"trustedProxies": ["127.0.0.1"]},
        "resourceLease": {
            "maxLeaseWait": "2s",
            "namespaces": {"default": {"leaseDuration": "60s", "maxAttempts": 5}},
            "replication": replication,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"omniRelay": section}))
    return path


def start(tmp_path, cfg, name="repl"):
    return NodeProcess(["serve", "--config", str(cfg)], tmp_path, name)


def request_id_of(lease):
    return lease.request_id


def test_kill9_restart_replays_the_log_nothing_lost_nothing_duplicated(tmp_path):
    db = tmp_path / "leases.db"
    cfg = config(tmp_path, {"kind": "sqlite", "path": str(db), "durableAck": True})
    node = start(tmp_path, cfg)
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="worker-a")
        for i in range(120):
            assert client.enqueue("table", f"t{i}", b"x", request_id=f"req-{i}")["duplicate"] is False
        completed = []
        for _ in range(40):
            lease = client.lease(wait=0)
            client.complete(lease)
            completed.append(request_id_of(lease))
        held = [client.lease(wait=0) for _ in range(10)]  # leased at the crash
        held_ids = [request_id_of(lease) for lease in held]

        # Steady enqueue load while the node is killed: every acknowledged
        # enqueue must survive; an unanswered one may or may not have.
        acked, unknown, stop = [], [], threading.Event()

        def load():
            loader = ResourceLeaseClient(node.http, transport="http", principal="loader",
                                         timeout=5)
            n = 0
            while not stop.is_set() and n < 5000:
                rid = f"load-{n}"
                n += 1
                try:
                    loader.enqueue("table", rid, b"y", request_id=rid)
                    acked.append(rid)
                except Exception:  # the node died mid-call: outcome unknown
                    unknown.append(rid)
                    return

        thread = threading.Thread(target=load)
        thread.start()
        deadline = time.monotonic() + 30
        while len(acked) < 100 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert len(acked) >= 100, "load did not start"
        node.stop(signal.SIGKILL)
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        node.stop(signal.SIGKILL)

    node = start(tmp_path, cfg, name="repl2")
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="worker-b")
        cp = node.get_json("/omnirelay/control/replication/checkpoint")
        replay = cp["replay"]["default"]
        assert replay["events"] > 0 and replay["lastSequence"] == replay["events"]
        # Effects recorded live before the crash are skipped, none recorded twice.
        assert replay["effectsSkipped"] > 0
        assert replay["effectsSkipped"] + replay["effectsRecorded"] == replay["events"]
        assert cp["replicator"]["kind"] == "sqlite"
        assert cp["replicator"]["queues"]["default"]["durable"] == replay["lastSequence"]
        sink = [s for s in cp["sinks"] if s["queue"] == "default"][0]
        assert sink["replayed"] == replay["events"] and sink["sequence"] == replay["lastSequence"]
        metrics = node.metrics()
        assert metric_total(metrics, "omnirelay_resourcelease_replication_events_total",
                            lease_replay="true") == replay["events"]

        # The pre-crash lease is dead: its token is stale now.
        # (Its item is pending again; a new lease of it gets a higher token.)
        old_worker = ResourceLeaseClient(node.http, transport="http", principal="worker-a")
        with pytest.raises(errors.OmniRelayError) as stale:
            old_worker.complete(held[0])
        assert stale.value.error_code == "stale-fencing-token", stale.value

        # Completed RequestIds stay completed (deduplicated), not requeued.
        again = client.enqueue("table", "t0", b"x", request_id=completed[0])
        assert again["duplicate"] is True and again["state"] == "completed"

        leased = []
        while True:
            lease = client.lease(wait=0)
            if lease is None:
                break
            leased.append(request_id_of(lease))
            client.complete(lease)
        # Nothing duplicated: each RequestId handed out once; nothing completed twice.
        assert len(leased) == len(set(leased))
        assert not set(leased) & set(completed)
        # Nothing lost: every enqueue acknowledged before the kill (and not
        # completed) comes back, the leases held at the crash included.
        expected = {f"req-{i}" for i in range(120)} - set(completed)
        assert expected <= set(leased)
        assert set(held_ids) <= set(leased)
        assert set(acked) <= set(leased)
        assert set(leased) <= expected | set(acked) | set(unknown)
        # The sequence continued after the replayed log.
        stats = client.stats()
        assert int(stats["sequence"]) > replay["lastSequence"]
    finally:
        node.stop()


def test_file_segment_log_recovers_after_restart(tmp_path):
    root = tmp_path / "segments"
    cfg = config(tmp_path, {"kind": "file", "path": str(root), "durableAck": True,
                            "shard": "users", "deterministic": {"kind": "file"}})
    node = start(tmp_path, cfg)
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="w")
        for i in range(12):
            client.enqueue("doc", f"d{i}", b"z", request_id=f"seg-{i}")
        lease = client.lease(wait=0)
        client.complete(lease)
        done_id = request_id_of(lease)
    finally:
        node.stop(signal.SIGKILL)
    segments = sorted(p.name for p in (root / "default").iterdir())
    assert segments[0] == "00000000000000000001.json"
    assert len(segments) == 14  # 12 enqueues, a lease, a completion
    first = json.loads((root / "default" / segments[0]).read_text())
    assert first["checksum"].startswith("crc32:") and first["event"]["shardId"] == "users"
    effects = sorted(p.name for p in (tmp_path / "segments-effects").iterdir())
    assert "resourcelease.default%2Fseq%2F1.json" in effects

    node = start(tmp_path, cfg, name="repl2")
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="w")
        cp = node.get_json("/omnirelay/control/replication/checkpoint")
        assert cp["replay"]["default"]["events"] == 14
        assert cp["replicator"]["shard"] == "users"
        left = []
        while (lease := client.lease(wait=0)) is not None:
            left.append(request_id_of(lease))
            client.complete(lease)
        assert sorted(left) == sorted(f"seg-{i}" for i in range(12) if f"seg-{i}" != done_id)
    finally:
        node.stop()


def test_a_corrupted_log_stops_the_node_with_the_position(tmp_path):
    db = tmp_path / "leases.db"
    cfg = config(tmp_path, {"kind": "sqlite", "path": str(db)})
    node = start(tmp_path, cfg)
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="w")
        for i in range(6):
            client.enqueue("table", f"t{i}", b"x", request_id=f"c-{i}")
    finally:
        node.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE lease_events SET event = replace(event, 'c-3', 'c-9') "
                     "WHERE sequence = 4")
    with pytest.raises(ProcessStartError) as failed:
        start(tmp_path, cfg, name="repl-corrupt")
    message = str(failed.value)
    assert "sequence 4" in message and "checksum" in message, message


def hub_config(tmp_path, port, name="hub"):
    section = {
        "service": name,
        "inbounds": {"grpc": {"address": f"127.0.0.1:{port}"}},
        "admin": {"address": "127.0.0.1:0"},
        "replicationHub": {"path": str(tmp_path / "hub.db")},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"omniRelay": section}))
    return path


def test_hub_partition_stops_acks_and_the_node_catches_up_and_recovers_from_the_hub(tmp_path):
    from omnirelay.harness.ports import PortAllocator

    port = PortAllocator().allocate()
    hub = start(tmp_path, hub_config(tmp_path, port), name="hub")
    cfg = config(tmp_path, {"kind": "grpc", "hub": f"127.0.0.1:{port}", "durableAck": True},
                 name="node")
    node = start(tmp_path, cfg, name="node")
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="w", timeout=3)
        for i in range(30):
            client.enqueue("table", f"t{i}", b"x", request_id=f"h-{i}")
        durable = node.get_json("/omnirelay/control/replication/checkpoint")
        assert durable["replicator"]["kind"] == "grpc"
        assert durable["replicator"]["queues"]["default"]["durable"] == 30

        # Partition: the hub dies. Enqueues are applied but not acknowledged.
        hub.stop(signal.SIGKILL)
        with pytest.raises(errors.OmniRelayError) as refused:
            client.enqueue("table", "t-p", b"x", request_id="h-partition")
        assert refused.value.error_code == "replication-write-failed", refused.value

        # Heal: the hub restarts on the same address with its log; the node's
        # buffered event is sent and acknowledgements resume.
        hub = start(tmp_path, hub_config(tmp_path, port), name="hub2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cp = node.get_json("/omnirelay/control/replication/checkpoint")
            if cp["replicator"]["queues"]["default"]["durable"] == 31:
                break
            time.sleep(0.05)
        assert cp["replicator"]["queues"]["default"]["durable"] == 31, cp
        assert cp["replicator"]["writeError"] is None
        client.enqueue("table", "t-after", b"x", request_id="h-after")
    finally:
        node.stop(signal.SIGKILL)

    # The node's own state is gone; it recovers from the hub's log.
    node = start(tmp_path, cfg, name="node2")
    try:
        client = ResourceLeaseClient(node.http, transport="http", principal="w")
        cp = node.get_json("/omnirelay/control/replication/checkpoint")
        assert cp["replay"]["default"]["events"] == 32
        leased = []
        while (lease := client.lease(wait=0)) is not None:
            leased.append(request_id_of(lease))
            client.complete(lease)
        expected = {f"h-{i}" for i in range(30)} | {"h-partition", "h-after"}
        assert sorted(leased) == sorted(expected)
    finally:
        node.stop()
        hub.stop()


def test_hub_outage_buffer_is_bounded_enqueue_pushes_back_then_resumes(tmp_path):
    """maxBuffered: while the hub is away the node buffers at most maxBuffered events
    per queue; beyond that enqueue answers RESOURCE_EXHAUSTED / replication-backlog with
    a retry-after (backpressure, never unbounded growth, never a drop); after the hub
    comes back the backlog drains and enqueues are admitted again."""
    from omnirelay.harness.ports import PortAllocator

    port = PortAllocator().allocate()
    hub = start(tmp_path, hub_config(tmp_path, port), name="hub")
    cfg = config(tmp_path, {"kind": "grpc", "hub": f"127.0.0.1:{port}", "durableAck": False,
                            "maxBuffered": 5}, name="node")
    node = start(tmp_path, cfg, name="node")  # recovers from the hub before serving
    try:
        hub.stop(signal.SIGKILL)  # the outage
        hub = None
        client = ResourceLeaseClient(node.http, transport="http", principal="w", timeout=3)
        for i in range(5):
            client.enqueue("table", f"t{i}", b"x", request_id=f"b-{i}")
        with pytest.raises(errors.ResourceExhausted) as pushed_back:
            client.enqueue("table", "t5", b"x", request_id="b-5")
        assert pushed_back.value.error_code == "replication-backlog", pushed_back.value
        assert pushed_back.value.retry_after == 0.2
        cp = node.get_json("/omnirelay/control/replication/checkpoint")
        position = cp["replicator"]["queues"]["default"]
        assert (position["published"], position["durable"]) == (5, 0), cp

        hub = start(tmp_path, hub_config(tmp_path, port), name="hub2")
        deadline = time.monotonic() + 30
        while node.get_json("/omnirelay/control/replication/checkpoint")[
                "replicator"]["queues"]["default"]["durable"] < 5:
            assert time.monotonic() < deadline, "the backlog did not drain after the hub came back"
            time.sleep(0.05)
        assert client.enqueue("table", "t5", b"x", request_id="b-5")["duplicate"] is False
        leased = []
        while (lease := client.lease(wait=0)) is not None:
            leased.append(lease.request_id)
            client.complete(lease)
        assert sorted(leased) == sorted(f"b-{i}" for i in range(6))
    finally:
        node.stop()
        if hub is not None:
            hub.stop()
