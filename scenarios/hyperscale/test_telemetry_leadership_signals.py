"""Telemetry_LeadershipAndShardSignals (seed 002, issue 11), leadership part.

A real Prometheus server (Debian's ``prometheus``) runs as a topology node and
scrapes every leader node's ``/metrics``. Across a failover (kill -9 of the
global leader) and a node restart, the scenario queries Prometheus's HTTP API:
the leadership series exist, the change counters show the events (counter
resets at restart are what Prometheus's ``increase`` handles), and the term
(fencing token) series never go backwards, also across the restart.

Shard signals come with the shards issue; this scenario covers leadership.
Run: ``pytest scenarios/hyperscale/test_telemetry_leadership_signals.py`` or
``omnirelay scenario run telemetry_leadership_signals``.
"""

from __future__ import annotations

import time

import pytest

from omnirelay.harness.leadership import (ROLE_MAP, leader_of, leadership_topology, prometheus_query,
                                          prometheus_range, role_map)
from omnirelay.scenario import Scenario

pytestmark = [pytest.mark.hyperscale, pytest.mark.chaos]


def scenario(s: Scenario) -> None:
    with s.given("three leaders on a SQLite store and a Prometheus scraping them every second"):
        cluster = s.cluster(leadership_topology("sqlite", prometheus=True))
        web = cluster["prometheus"].address("web")
        observer = cluster["east-leader"].admin
        s.eventually(lambda: role_map(observer) == ROLE_MAP, within_s=20, message="bootstrap role map")
        s.eventually(lambda: len(prometheus_query(web, 'up{job="omnirelay"} == 1')) == 3, within_s=30,
                     message="Prometheus scrapes all three nodes")
        started = time.time()

    with s.when("the global leader is killed (-9), then restarted, and the west leader is restarted"):
        cluster["global-leader"].kill()
        s.eventually(lambda: leader_of(observer, "global") == "west-leader", within_s=15,
                     message="west-leader promoted to global")
        time.sleep(2.5)  # a couple of scrapes
        cluster["global-leader"].start()
        cluster["west-leader"].restart()
        s.eventually(lambda: leader_of(observer, "global") is not None, within_s=15,
                     message="global has a leader after the restarts")
        s.eventually(lambda: leader_of(observer, "region/west") == "west-leader", within_s=20,
                     message="west-leader leads its region again after restart")
        time.sleep(3.0)  # let Prometheus scrape the final state
        ended = time.time()

    with s.then("the leadership series exist for every node"):
        for metric in ("omnirelay_leadership_changes_total", "omnirelay_leadership_term",
                       "omnirelay_leadership_is_leader", "omnirelay_leadership_lease_renew_duration_seconds_count"):
            result = prometheus_query(web, metric)
            instances = {r["metric"].get("instance") for r in result}
            assert len(instances) == 3, (metric, instances)

    with s.and_("the change counters show the failover (increase over the run handles restarts)"):
        window = f"{int(ended - started) + 5}s"
        result = prometheus_query(web, f'sum(increase(omnirelay_leadership_changes_total{{scope="global"}}[{window}]))')
        assert result and float(result[0]["value"][1]) >= 1, result
        s.note(f"increase of global leadership changes over {window}: {result[0]['value'][1]}")

    with s.and_("the term of every scope never goes backwards on any node, restarts included"):
        series = prometheus_range(web, "omnirelay_leadership_term", started - 5, ended, step="1s")
        assert series, "no term series in Prometheus"
        for entry in series:
            values = [float(v) for _, v in entry["values"]]
            assert values == sorted(values), (entry["metric"], values)
        by_scope = {}
        for entry in series:
            by_scope.setdefault(entry["metric"]["scope"], []).append(float(entry["values"][-1][1]))
        s.save_json("terms.json", {k: v for k, v in by_scope.items()})
        global_terms = by_scope.get("global", [])
        assert global_terms and max(global_terms) == min(global_terms), \
            f"every node must end on the same global term: {global_terms}"


def test_telemetry_leadership_signals(run_scenario):
    run_scenario(scenario)
