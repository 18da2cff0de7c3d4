"""Chaos utilities: a user-space fault proxy for links, node faults, region
isolation and seeded fault schedules. See docs/harness.md."""

from omnirelay.chaos.controller import ChaosController
from omnirelay.chaos.proxy import KINDS, MAX_WINDOW_S, Fault, FaultError, FaultProxy
from omnirelay.chaos.schedule import FaultSchedule, ScheduledFault

__all__ = ["ChaosController", "Fault", "FaultError", "FaultProxy", "FaultSchedule", "KINDS", "MAX_WINDOW_S",
           "ScheduledFault"]
