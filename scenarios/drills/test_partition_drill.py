"""Partition / replication lag: node A cut from the hub by the fault proxy (docs/replication.md "Failure drills").

CI: one round of 120 items; ``--scale full``: 10 rounds of 400 items
(OMNIRELAY_DRILL_ROUNDS / OMNIRELAY_DRILL_ITEMS override both). Every round must end
with 0 lost and 0 duplicated items; the per-round summaries are saved to
``rounds.json`` in the artifacts.

Run: ``pytest scenarios/drills -m chaos`` or
``omnirelay scenario run partition_drill [--scale full]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drills import drill_size, run_partition_round  # noqa: E402
from omnirelay.scenario import Scenario  # noqa: E402

pytestmark = [pytest.mark.chaos]


def scenario(s: Scenario) -> None:
    rounds, items = drill_size(s.scale)
    summaries = []
    for round_ in range(rounds):
        with s.when(f"round {round_ + 1}/{rounds}: {items} items"):
            directory = s.artifacts_dir / f"round-{round_}"
            directory.mkdir(parents=True, exist_ok=True)
            summary = run_partition_round(directory, round_, items, log=s.note)
            assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
            summaries.append(summary)
    with s.then("every round: 0 lost, 0 duplicated"):
        s.save_json("rounds.json", summaries)
        s.note(f"{rounds} rounds x {items} items, lost 0, duplicated 0, "
               f"wall {sum(x['wall_s'] for x in summaries):.1f}s")


def test_partition_drill(run_scenario):
    run_scenario(scenario)
