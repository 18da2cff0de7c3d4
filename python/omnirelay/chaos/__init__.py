"""Chaos utilities: a user-space fault proxy for links, node faults, region
isolation, seeded fault schedules, and real packet loss in network namespaces
(iptables statistic). See docs/harness.md."""

from omnirelay.chaos.controller import ChaosController
from omnirelay.chaos.netns import LossRule, NetnsError, NetnsLab, measure_udp_loss
from omnirelay.chaos.proxy import KINDS, MAX_WINDOW_S, Fault, FaultError, FaultProxy
from omnirelay.chaos.schedule import FaultSchedule, ScheduledFault

__all__ = ["ChaosController", "Fault", "FaultError", "FaultProxy", "FaultSchedule", "KINDS", "LossRule",
           "MAX_WINDOW_S", "NetnsError", "NetnsLab", "ScheduledFault", "measure_udp_loss"]
