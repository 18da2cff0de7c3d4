"""Leadership across real node processes (issue 11): every node is an
`omnirelay-native serve` process with `omniRelay.leadership`, sharing either
one SQLite file or a real etcd started by the harness as a topology node.

Proves end to end: the declared role map holds on bootstrap; kill -9 of the
global leader promotes a regional leader within about a lease; `omnirelay mesh
promote` hands over and the old leader's writes are refused; a leader paused
past its lease never writes after its successor (a Jepsen-style history of
fenced writes checked for overlap). Rounds and runs are small in CI; set
OMNIRELAY_LEADERSHIP_ROUNDS / OMNIRELAY_FAILOVER_RUNS for the full scale
(docs/leadership.md quotes the figures)."""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import Cluster, http_get
from omnirelay.harness.leadership import ROLE_MAP, fenced_write, leader_of, leaders, leadership_topology
from omnirelay.harness.leadership import role_map as leadership_role_map
from mesh_support import wait_until as _poll


def wait_until(predicate, timeout_s, interval_s=0.02):
    return _poll(predicate, timeout_s, interval_s, ignore=(OSError, RuntimeError, KeyError))

try:
    find_native_binary()
except NativeBinaryNotFound as error:  # pragma: no cover - depends on the checkout
    pytest.skip(f"leadership tests need omnirelay-native: {error}", allow_module_level=True)

STORES = ["sqlite", "etcd"]
LEASE_S = 2.0  # the fast profile
ROUNDS = int(os.environ.get("OMNIRELAY_LEADERSHIP_ROUNDS", "1"))
FAILOVER_RUNS = int(os.environ.get("OMNIRELAY_FAILOVER_RUNS", "1"))



def topology(store):
    return leadership_topology(store)


def role_map(admin):
    return leadership_role_map(admin)


EXPECTED = ROLE_MAP


def global_token(admin):
    return next(s["fencingToken"] for s in leaders(admin)["scopes"] if s["scope"] == "global")


def writer_thread(cluster, name, scope, history, stop, lock):
    """Appends (node, ok, token, revision) per fenced write until `stop` is set."""
    seq = 0
    while not stop.is_set():
        node = cluster[name]
        if node.is_running() and not node.paused:
            try:
                status, body = fenced_write(node.admin, scope, f"history/{name}/{seq}", str(seq), timeout=1.0)
                with lock:
                    if status == 200:
                        history.append((name, "ok", body["fencingToken"], body["revision"]))
                    else:
                        history.append((name, "fail", None, None))
            except OSError:
                with lock:
                    history.append((name, "info", None, None))  # outcome unknown: not a failure
            seq += 1
        time.sleep(0.01)


def check_no_overlap(history):
    """In store order (revision), the fencing token never goes back, and a
    token belongs to exactly one node: two leaders never interleave writes."""
    oks = sorted((h for h in history if h[1] == "ok"), key=lambda h: h[3])
    owner = {}
    for previous, current in zip(oks, oks[1:]):
        assert current[2] >= previous[2], f"{current[0]} wrote with token {current[2]} after {previous}"
    for name, _, token, _ in oks:
        assert owner.setdefault(token, name) == name, f"token {token} used by {owner[token]} and {name}"
    return oks


@pytest.mark.parametrize("store", STORES)
def test_bootstrap_role_map_and_kill9_failover_promotes_a_region(tmp_path, store):
    with Cluster(topology(store), tmp_path / store) as cluster:
        admin = cluster["east-leader"].admin
        assert wait_until(lambda: role_map(admin) == EXPECTED, 20), role_map(admin)
        old_token = next(s["fencingToken"] for s in leaders(admin)["scopes"] if s["scope"] == "global")
        samples = []
        for run in range(FAILOVER_RUNS):
            killed = time.monotonic()
            cluster["global-leader"].kill()

            def new_leader_serving():
                leader = leader_of(admin, "global")
                if leader not in ("west-leader", "east-leader"):
                    return False
                status, _ = fenced_write(cluster[leader].admin, "global", f"probe/{run}", "x", timeout=1.0)
                return status == 200

            assert wait_until(new_leader_serving, 15), leaders(admin)
            samples.append(time.monotonic() - killed)
            assert leader_of(admin, "global") == "west-leader", "west has the better promotion priority"
            token = next(s["fencingToken"] for s in leaders(admin)["scopes"] if s["scope"] == "global")
            assert token > old_token
            old_token = token
            if run + 1 < FAILOVER_RUNS:
                # Hand global back to the restarted global leader for the next run.
                cluster["global-leader"].start()
                subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "promote", "--scope", "global",
                                "--node", "global-leader", "--admin", admin], check=True, capture_output=True)
                assert wait_until(lambda: leader_of(admin, "global") == "global-leader", 15)
                old_token = next(s["fencingToken"] for s in leaders(admin)["scopes"] if s["scope"] == "global")
        figures = sorted(samples)
        print(f"\n{store} failover kill -9 -> new leader serving over {len(figures)} run(s): "
              f"min {figures[0]:.2f}s median {statistics.median(figures):.2f}s max {figures[-1]:.2f}s "
              f"(lease {LEASE_S:.0f}s)")
        # Target: lease + 1 s; the bound here is looser for a loaded shared host.
        assert statistics.median(figures) < LEASE_S + 4.0
        # West keeps its region; metrics record the change.
        assert leader_of(admin, "region/west") == "west-leader"
        status, text = http_get(cluster["east-leader"].admin_url + "/metrics")
        assert status == 200
        assert 'omnirelay_leadership_changes_total{scope="global"}' in text
        assert 'omnirelay_leadership_term{scope="global"}' in text


@pytest.mark.parametrize("store", STORES)
def test_cli_promote_hands_over_and_the_old_leader_is_refused(tmp_path, store):
    with Cluster(topology(store), tmp_path / store) as cluster:
        admin = cluster["east-leader"].admin
        assert wait_until(lambda: role_map(admin) == EXPECTED, 20), role_map(admin)
        old = cluster["global-leader"].admin
        assert fenced_write(old, "global", "config", "v1")[0] == 200
        result = subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "promote", "--scope", "global",
                                 "--node", "west-leader", "--admin", admin], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert wait_until(lambda: leader_of(admin, "global") == "west-leader", 15), leaders(admin)
        status, body = fenced_write(old, "global", "config", "v-stale")
        assert status == 412 and body["status"] == "FAILED_PRECONDITION", body
        assert fenced_write(cluster["west-leader"].admin, "global", "config", "v2")[0] == 200
        listing = subprocess.run([sys.executable, "-m", "omnirelay", "mesh", "leaders", "--admin", admin],
                                 capture_output=True, text=True)
        assert listing.returncode == 0 and "west-leader" in listing.stdout, listing.stdout
        status, text = http_get(cluster["west-leader"].admin_url + "/omnirelay/introspect")
        introspected = {s["scope"]: s for s in json.loads(text)["leadership"]["scopes"]}
        assert status == 200 and introspected["global"]["held"] and introspected["global"]["leaseExpiresAt"]
        assert introspected["global"]["fencingToken"] > 0 and introspected["region/west"]["candidate"]
        time.sleep(2 * LEASE_S + 1)  # past the promotion marker: the old leader does not take it back
        assert leader_of(admin, "global") == "west-leader"


@pytest.mark.parametrize("store", STORES)
def test_split_brain_drill_paused_leader_never_overlaps(tmp_path, store):
    """Seed 003's drill for leadership: SIGSTOP the leader past its lease while
    every node keeps attempting fenced writes, resume it, repeat; the history
    shows exactly one writer per token and tokens never going back."""
    with Cluster(topology(store), tmp_path / store) as cluster:
        admin = cluster["east-leader"].admin
        assert wait_until(lambda: role_map(admin) == EXPECTED, 20), role_map(admin)
        history, lock, stop = [], threading.Lock(), threading.Event()
        writers = [threading.Thread(target=writer_thread, args=(cluster, name, "global", history, stop, lock),
                                    daemon=True)
                   for name in ("global-leader", "west-leader", "east-leader")]
        for w in writers:
            w.start()
        leaders_seen, takeovers = [], []
        try:
            for _ in range(ROUNDS):
                current = leader_of(admin, "global")
                token_before = global_token(admin)
                leaders_seen.append(current)

                def leader_has_written():
                    with lock:
                        return any(h[0] == current and h[1] == "ok" for h in history)

                assert wait_until(leader_has_written, 10), "the leader's fenced writes must succeed first"
                cluster[current].pause()
                during = wait_until(lambda: leader_of(admin, "global") not in (None, current), 2 * LEASE_S + 3)
                takeovers.append("during pause" if during else "after resume")
                if store == "etcd":
                    assert during, "etcd: a successor must be elected while the old leader is paused"
                # SQLite: a process stopped inside a write transaction keeps the file's write lock,
                # so the store stalls until it resumes (liveness, not safety: docs/leadership.md).
                cluster[current].resume()
                # A new leadership (a larger token); with SQLite it may be the resumed node again
                # when every lease lapsed during the stall and it has the best priority.
                assert wait_until(lambda: leader_of(admin, "global") is not None
                                  and global_token(admin) > token_before, 15), leaders(admin)
                time.sleep(1.0)  # the resumed node's writes meet the store's fence
        finally:
            stop.set()
            for w in writers:
                w.join(5)
        oks = check_no_overlap(history)
        writers_ok = {h[0] for h in oks}
        assert len(writers_ok) >= 2, f"expected a hand-over in the history, got writers {writers_ok}"
        print(f"\n{store} split-brain drill: {ROUNDS} round(s), {len(oks)} fenced writes accepted, "
              f"{sum(1 for h in history if h[1] == 'fail')} refused, no overlap; leaders paused: {leaders_seen}; takeover: {takeovers}")


@pytest.mark.parametrize("store,setting,expected", [
    ("etcd", "leadership.endpoints=127.0.0.1:{port}", "no etcd endpoint answered"),
    ("sqlite", "leadership.path=/nonexistent-omnirelay-dir/coord.db", "cannot open SQLite database"),
])
def test_mis_set_store_fails_the_start_fast_with_a_clear_error(tmp_path, store, setting, expected):
    from omnirelay.harness.ports import ALLOCATOR

    port = ALLOCATOR.allocate()  # nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        [str(find_native_binary()), "serve", "--name", "n1", "--admin-address", f"127.0.0.1:{ALLOCATOR.allocate()}",
         "--set", f"leadership.store={store}", "--set", setting.format(port=port),
         "--set", "leadership.dialTimeout=500ms"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    assert time.monotonic() - started < 10
    assert expected in result.stderr + result.stdout, result.stderr
