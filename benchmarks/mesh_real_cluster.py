"""Mesh membership with real processes (issue 10 targets, fast test profile).

Starts N ``omnirelay-native serve`` mesh nodes (default 10) with the harness,
then repeats ``--runs`` times: kill -9 one node and measure how long until
every other node's ``/omnirelay/control/peers`` shows it dead (polled every
50 ms), then restart it and wait for everyone to see it alive again. Prints
each detection time and the median. Then measures idle gossip CPU per node
(user + system CPU time of each process over ``--idle-seconds``, as % of one
core) and prints the median and max.

Usage: ``.venv/bin/python benchmarks/mesh_real_cluster.py [--nodes 10] [--runs 5]
[--idle-seconds 20] [--profile test]``. The machine's load shows in both
figures: quote them with the load average printed alongside.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from omnirelay.harness import Cluster
from omnirelay.mesh import peers, states
from omnirelay.topology import TopologyBuilder


def wait(predicate, within_s, interval_s=0.05):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--profile", default="test")
    args = parser.parse_args()
    b = TopologyBuilder("mesh-bench", f"{args.nodes} mesh nodes")
    for i in range(1, args.nodes + 1):
        b.node(f"m{i}", role="worker", region="east" if i % 2 else "west", zone=f"z{i % 3}")
    topology = b.with_mesh_identity(profile=args.profile).build()
    names = [n.name for n in topology.nodes]
    with tempfile.TemporaryDirectory() as tmp, Cluster(topology, Path(tmp) / "c", seed=1) as cluster:
        def everyone_alive():
            return all(set(states(peers(n.admin)).values()) == {"alive"} and len(states(peers(n.admin))) == len(names)
                       for n in cluster)
        assert wait(everyone_alive, 60, 0.25), "cluster did not converge"
        print(f"{args.nodes} nodes up, profile {args.profile}, load average {os.getloadavg()}", flush=True)

        idle = {}
        procs = {n.name: psutil.Process(n.pid) for n in cluster}
        before = {name: p.cpu_times() for name, p in procs.items()}
        time.sleep(args.idle_seconds)
        for name, p in procs.items():
            after = p.cpu_times()
            used = (after.user - before[name].user) + (after.system - before[name].system)
            idle[name] = 100.0 * used / args.idle_seconds
        print(f"idle CPU per node over {args.idle_seconds:g}s (% of one core): median "
              f"{statistics.median(idle.values()):.2f}, max {max(idle.values()):.2f}", flush=True)

        detections = []
        for run in range(args.runs):
            victim = cluster[names[(run * 3 + 2) % len(names)]]
            others = [n for n in cluster if n.name != victim.name]
            killed = time.monotonic()
            victim.kill()
            seen = {}
            while len(seen) < len(others) and time.monotonic() - killed < 30:
                for n in others:
                    if n.name not in seen and states(peers(n.admin)).get(victim.name) == "dead":
                        seen[n.name] = time.monotonic() - killed
                time.sleep(0.05)
            detection = max(seen.values()) if len(seen) == len(others) else float("inf")
            detections.append(detection)
            print(f"run {run + 1}: kill -9 {victim.name} seen dead by all {len(others)} others after "
                  f"{detection:.2f}s (first after {min(seen.values()):.2f}s)", flush=True)
            victim.start(wait=True)
            assert wait(everyone_alive, 30, 0.25), "the restarted node did not rejoin"
        print(f"kill -9 detection, {args.nodes} nodes: median {statistics.median(detections):.2f}s over "
              f"{len(detections)} runs (min {min(detections):.2f}, max {max(detections):.2f}); "
              f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
