"""Peer loss: kill -9 one of three mesh worker nodes while it holds leases (docs/replication.md "Failure drills").

CI: one round of 120 items; ``--scale full``: 10 rounds of 400 items
(OMNIRELAY_DRILL_ROUNDS / OMNIRELAY_DRILL_ITEMS override both). Every round must end
with 0 lost and 0 duplicated items; the per-round summaries are saved to
``rounds.json`` in the artifacts.

Run: ``pytest scenarios/drills -m chaos`` or
``omnirelay scenario run peer_loss_drill [--scale full]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _drills import run_peer_loss_round, run_rounds  # noqa: E402
from omnirelay.scenario import Scenario  # noqa: E402

pytestmark = [pytest.mark.chaos]


def scenario(s: Scenario) -> None:
    run_rounds(s, run_peer_loss_round)


def test_peer_loss_drill(run_scenario):
    run_scenario(scenario)
