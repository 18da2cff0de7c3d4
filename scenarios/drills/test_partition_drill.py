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
from _drills import run_partition_round, run_rounds  # noqa: E402
from omnirelay.scenario import Scenario  # noqa: E402

pytestmark = [pytest.mark.chaos]


def scenario(s: Scenario) -> None:
    run_rounds(s, run_partition_round)


def test_partition_drill(run_scenario):
    run_scenario(scenario)
