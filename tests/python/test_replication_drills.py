"""Failure drill (docs/replication.md): split-brain avoidance. Two shard nodes with
durable SQLite replication and deterministic stores; workers lease and complete while
one node is killed with SIGKILL mid-processing and restarted (it replays its log).
Checked afterwards, Jepsen-style: no RequestId is acknowledged complete twice, every
RequestId ends completed (a re-enqueue answers duplicate/completed), the restarted
node replayed with lease.replay=true. Rounds: OMNIRELAY_DRILL_ROUNDS (CI 1, full 10),
items per round: OMNIRELAY_DRILL_ITEMS (CI 120)."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time

import pytest

from dataplane_support import NodeProcess, metric_total
from omnirelay import errors
from omnirelay.resourcelease import ResourceLeaseClient

ROUNDS = int(os.environ.get("OMNIRELAY_DRILL_ROUNDS", "1"))
ITEMS = int(os.environ.get("OMNIRELAY_DRILL_ITEMS", "120"))


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


@pytest.mark.chaos
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_split_brain_drill_kill9_half_the_shards(tmp_path, round_):
    shards = [Shard(tmp_path, "a"), Shard(tmp_path, "b")]
    try:
        ids = [f"r{round_}-{i}" for i in range(ITEMS)]
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
        while sum(1 for h in history if h[0] == "ok") < ITEMS // 4:
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
    finally:
        for s in shards:
            s.node.stop()
