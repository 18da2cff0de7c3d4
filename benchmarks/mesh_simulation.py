"""Mesh membership at scale, in the deterministic simulator (issue 10 targets).

Prints, for the LAN profile (memberlist's defaults: 1 s probes):

* rounds (simulated seconds / probe interval) for a failure and for a join to
  reach every node of 100 / 1,000 / 5,000 nodes (``--sizes``), with the
  wall time of each run;
* false positives (live members declared dead) at 1 % uniform packet loss
  over 10 simulated minutes at 1,000 nodes, with the wall time of that run
  (target: under a minute).

Usage: ``.venv/bin/python benchmarks/mesh_simulation.py [--sizes 100,1000,5000]
[--loss-nodes 1000] [--loss-minutes 10] [--seed 1] [--json out.json]``.
Each run is reproducible from its seed. 5,000 nodes hold 25 M member entries
(every node knows every other): a few GiB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import math
import resource
import time

from omnirelay.mesh import Simulator


def dissemination(nodes: int, seed: int) -> dict:
    started = time.perf_counter()
    sim = Simulator(nodes, seed=seed, profile="lan")
    setup_s = time.perf_counter() - started
    sim.run_for(5)  # a running cluster, not a cold start
    t = time.perf_counter()
    failure = sim.measure_failure(nodes // 2, limit_s=600)
    join = sim.measure_join(limit_s=600)
    return {"nodes": nodes, "failure": failure, "join": join, "setupWallSeconds": round(setup_s, 2),
            "measureWallSeconds": round(time.perf_counter() - t, 2), "log2N": round(math.log2(nodes), 2),
            "falseDeaths": sim.false_deaths}


def loss_run(nodes: int, minutes: float, loss: float, seed: int) -> dict:
    started = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    sim = Simulator(nodes, seed=seed, profile="lan", loss=loss)
    sim.run_for(minutes * 60)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    totals = sim.totals()
    return {"nodes": nodes, "simulatedMinutes": minutes, "loss": loss, "wallSeconds": round(wall, 2),
            "cpuSeconds": round(cpu, 2), "loadAverage": os.getloadavg(),
            "falseDeaths": sim.false_deaths, "falseSuspicions": sim.false_suspicions,
            "converged": sim.converged(), "totals": totals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--loss-nodes", type=int, default=1000)
    parser.add_argument("--loss-minutes", type=float, default=10)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    results = {"dissemination": [], "loss": None}
    print(f"{'nodes':>6} {'failure rounds':>15} {'(first suspect s)':>18} {'join rounds':>12} "
          f"{'log2 N':>7} {'wall s':>7}")
    for size in (int(s) for s in args.sizes.split(",") if s):
        r = dissemination(size, args.seed)
        results["dissemination"].append(r)
        print(f"{size:>6} {r['failure']['rounds']:>15.2f} {r['failure']['firstSuspicionSeconds']:>18.2f} "
              f"{r['join']['rounds']:>12.2f} {r['log2N']:>7.2f} "
              f"{r['setupWallSeconds'] + r['measureWallSeconds']:>7.1f}", flush=True)
    if args.loss_nodes > 0:
        r = loss_run(args.loss_nodes, args.loss_minutes, args.loss, args.seed)
        results["loss"] = r
        print(f"\n{r['nodes']} nodes, {r['simulatedMinutes']:g} simulated minutes at {r['loss'] * 100:g}% loss: "
              f"{r['falseDeaths']} false deaths; {r['totals']['suspicionsRaised']} suspicion(s) of live members "
              f"raised, {r['totals']['suspicionsRefuted']} refuted ({r['falseSuspicions']} member views "
              f"saw one), "
              f"converged={r['converged']}, wall {r['wallSeconds']:.1f} s, CPU {r['cpuSeconds']:.1f} s, "
              f"load average {r['loadAverage'][0]:.1f} "
              f"({r['totals']['events']} events, {r['totals']['messagesSent']} messages)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
