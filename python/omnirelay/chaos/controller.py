"""Chaos against a running :class:`~omnirelay.harness.Cluster`: node faults
(pause/resume, kill -9, graceful stop, restart), link faults through the fault
proxies, region isolation and partitions, and seeded schedules. Every fault
has a bounded window and heals by itself (a timer), and ``heal_all()`` runs
at cluster teardown. Every action is logged to the cluster's ``events.jsonl``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from omnirelay.chaos.proxy import MAX_WINDOW_S, Fault, FaultError
from omnirelay.chaos.schedule import FaultSchedule, ScheduledFault


class ChaosController:
    def __init__(self, cluster: Any, seed: int = 0) -> None:
        self.cluster = cluster
        self.seed = seed
        self._timers: List[threading.Timer] = []
        self._lock = threading.Lock()
        self._schedule_thread: Optional[threading.Thread] = None
        self._schedule_stop = threading.Event()
        self.applied: List[Dict[str, Any]] = []

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _check_window(duration_s: float) -> float:
        if not (0 < float(duration_s) <= MAX_WINDOW_S):
            raise FaultError(f"fault window must be within (0, {MAX_WINDOW_S}] s, got {duration_s}")
        return float(duration_s)

    def _later(self, delay_s: float, fn: Any, *args: Any) -> threading.Timer:
        timer = threading.Timer(delay_s, fn, args)
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()
        return timer

    def _record(self, action: str, **fields: Any) -> None:
        entry = {"ts": time.time(), "action": action, **fields}
        self.applied.append(entry)
        self.cluster.event("chaos." + action, **fields)

    def _node(self, node: Any) -> Any:
        return self.cluster.node(node) if isinstance(node, str) else node

    # -- node faults -----------------------------------------------------------------
    def pause(self, node: Any, duration_s: float) -> None:
        """SIGSTOP now, SIGCONT after ``duration_s``."""
        n = self._node(node)
        window = self._check_window(duration_s)
        n.pause()
        self._record("pause", node=n.name, duration_s=window)
        self._later(window, self._resume_if_paused, n)

    def _resume_if_paused(self, n: Any) -> None:
        if n.paused:
            # Recorded before SIGCONT: whoever sees the node answer again
            # already finds the resume in the history.
            self._record("resume", node=n.name, reason="window ended")
            n.resume()

    def resume(self, node: Any) -> None:
        n = self._node(node)
        n.resume()
        self._record("resume", node=n.name, reason="explicit")

    def kill(self, node: Any, down_for_s: Optional[float] = None) -> None:
        """kill -9. With ``down_for_s`` the node is restarted after that window
        (bounded outage); without it, its restart policy decides."""
        n = self._node(node)
        if down_for_s is not None:
            window = self._check_window(down_for_s)
            n._expected_down = True  # the chaos timer, not the supervisor, brings it back
            n.kill()
            self._record("kill", node=n.name, down_for_s=window)
            self._later(window, self._bring_back, n)
        else:
            n.kill()
            self._record("kill", node=n.name)

    def stop(self, node: Any, down_for_s: Optional[float] = None, grace_s: float = 5.0) -> None:
        """Graceful stop (SIGTERM, drain); restarted after ``down_for_s`` if given."""
        n = self._node(node)
        n.stop(grace_s)
        self._record("stop", node=n.name, down_for_s=down_for_s)
        if down_for_s is not None:
            self._later(self._check_window(down_for_s), self._bring_back, n)

    def _bring_back(self, n: Any) -> None:
        if self.cluster._stopped or n.is_running():
            return
        try:
            n.restarts += 1
            n.start(wait=True)
            self._record("restarted", node=n.name)
        except Exception as error:  # logged; the test's assertions will notice
            self._record("restart_failed", node=n.name, error=str(error))

    def restart(self, node: Any, grace_s: float = 5.0) -> None:
        n = self._node(node)
        self._record("restart", node=n.name)
        n.restart(grace_s)

    # -- link faults -------------------------------------------------------------------
    def _proxy(self, link: Any) -> Any:
        handle = self.cluster.link(link) if isinstance(link, str) else link
        if handle.proxy is None:
            raise FaultError(f"link {handle.name} is not proxied (set proxy: true in the topology)")
        return handle.proxy

    def link_fault(self, link: Any, kind: str, duration_s: float, name: Optional[str] = None,
                   direction: str = "both", **params: float) -> Fault:
        proxy = self._proxy(link)
        fault = proxy.add(kind, duration_s, name=name, direction=direction, **params)
        self._record("link_fault", link=proxy.name, kind=kind, fault=fault.name, duration_s=duration_s,
                     direction=direction, params=params)
        return fault

    def latency(self, link: Any, latency_ms: float, duration_s: float, jitter_ms: float = 0.0,
                direction: str = "both") -> Fault:
        return self.link_fault(link, "latency", duration_s, direction=direction, latency_ms=latency_ms,
                               jitter_ms=jitter_ms)

    def blackhole(self, link: Any, duration_s: float, direction: str = "both") -> Fault:
        return self.link_fault(link, "blackhole", duration_s, direction=direction)

    def reset(self, link: Any, duration_s: float = 0.1) -> Fault:
        return self.link_fault(link, "reset", duration_s)

    def bandwidth(self, link: Any, rate_bps: float, duration_s: float, direction: str = "both") -> Fault:
        return self.link_fault(link, "bandwidth", duration_s, direction=direction, rate_bps=rate_bps)

    def heal_link(self, link: Any) -> None:
        proxy = self._proxy(link)
        proxy.clear()
        self._record("heal_link", link=proxy.name)

    # -- regions and partitions -------------------------------------------------------------
    def partition(self, side_a: Iterable[str], side_b: Optional[Iterable[str]] = None,
                  duration_s: float = 5.0) -> List[str]:
        """Blackholes every proxied link between the node sets ``side_a`` and
        ``side_b`` (default: everyone else), both ways; returns the links hit.
        Links that are not proxied cannot be cut and are reported in the event."""
        window = self._check_window(duration_s)
        a = set(side_a)
        b = set(side_b) if side_b is not None else set(self.cluster.nodes) - a
        hit, uncut = [], []
        for handle in self.cluster.links.values():
            s, t = handle.spec.source, handle.spec.target
            if (s in a and t in b) or (s in b and t in a):
                if handle.proxy is None:
                    uncut.append(handle.name)
                    continue
                handle.proxy.add("blackhole", window, name="partition")
                hit.append(handle.name)
        self._record("partition", side_a=sorted(a), side_b=sorted(b), duration_s=window, links=hit,
                     not_proxied=uncut)
        return hit

    def isolate_region(self, region: str, duration_s: float) -> List[str]:
        """Blackholes every proxied link crossing ``region``'s boundary."""
        inside = [n.name for n in self.cluster.nodes.values() if n.region == region]
        if not inside:
            raise FaultError(f"no node in region {region!r} (regions: "
                             f"{sorted({n.region for n in self.cluster.nodes.values()})})")
        hit = self.partition(inside, None, duration_s)
        self._record("isolate_region", region=region, duration_s=duration_s, links=hit)
        return hit

    # -- real packet loss (network namespaces, iptables statistic) ---------------------------
    def _loss_keys(self, target: Any, roles: Optional[Sequence[str]]) -> List[Tuple[str, List[str]]]:
        """(namespace key, node names) for ``target``: a node name, a region, or a
        list of node names; ``roles`` keeps only nodes with one of those roles."""
        lab = self.cluster.netns
        if lab is None:
            raise FaultError("packet loss needs a topology with netns (node or region): "
                             "set `netns: node` or TopologyBuilder.with_netns()")
        nodes = self.cluster.nodes
        by_region = False
        if isinstance(target, (list, tuple, set, frozenset)):
            chosen = [self._node(t) for t in target]
        elif target in nodes:
            chosen = [nodes[target]]
        else:
            by_region = True
            chosen = [n for n in nodes.values() if n.region == target]
            if not chosen:
                raise FaultError(f"{target!r} is neither a node nor a region (regions: "
                                 f"{sorted({n.region for n in nodes.values()})})")
        if roles is not None:
            chosen = [n for n in chosen if n.role in set(roles)]
        keys: Dict[str, List[str]] = {}
        for n in chosen:
            if n.netns_key is None:
                if by_region:
                    continue  # a region's root-namespace nodes (netns: false) are not hit
                raise FaultError(f"node {n.name} runs in the root namespace (netns: false): no loss there")
            keys.setdefault(n.netns_key, []).append(n.name)
        if not keys:
            raise FaultError(f"no namespaced node matches {target!r}" + (f" with roles {list(roles)}" if roles else ""))
        return sorted(keys.items())

    def packet_loss(self, target: Any, probability: float, duration_s: float, direction: str = "both",
                    roles: Optional[Sequence[str]] = None) -> List[Any]:
        """Drops each packet entering/leaving the namespace(s) of ``target`` (a
        node, a region or a list of nodes; ``roles`` filters) with
        ``probability``, for ``duration_s`` (bounded): iptables
        ``-m statistic --mode random --probability P -j DROP`` on the
        namespace's veth. Returns the installed rules (for :meth:`heal_loss`).
        In ``region`` mode a node's namespace is its whole region's."""
        window = self._check_window(duration_s)
        lab = self.cluster.netns
        if lab is None:
            self._loss_keys(target, roles)  # raises the explanatory FaultError
        rules = []
        try:
            for key, names in self._loss_keys(target, roles):
                rule = lab.add_loss(key, probability, direction, tag=f"{key}-{len(self.applied)}")
                rules.append(rule)
                self._record("packet_loss", namespace=rule.namespace, nodes=names, probability=probability,
                             direction=direction, duration_s=window)
        except BaseException:
            for rule in rules:
                lab.remove_loss(rule)
            raise
        self._later(window, self._end_loss, rules, "window ended")
        return rules

    def _end_loss(self, rules: Sequence[Any], reason: str) -> None:
        lab = self.cluster.netns
        if lab is None:
            return
        for rule in rules:
            if lab.remove_loss(rule):
                self._record("packet_loss_removed", namespace=rule.namespace, reason=reason)

    def heal_loss(self, rules: Optional[Sequence[Any]] = None) -> None:
        """Removes ``rules`` (default: every loss rule of this cluster) now."""
        lab = self.cluster.netns
        if lab is None:
            return
        self._end_loss(list(lab.rules) if rules is None else rules, "explicit")

    # -- schedules -----------------------------------------------------------------------------
    def schedule(self, duration_s: float, kinds: Sequence[str] = ("latency", "blackhole", "pause"),
                 seed: Optional[int] = None, **kwargs: Any) -> FaultSchedule:
        """A schedule over this cluster's proxied links, nodes and regions, from ``seed``
        (default: the cluster's seed)."""
        return FaultSchedule.generate(
            self.seed if seed is None else seed, duration_s,
            links=[l.name for l in self.cluster.links.values() if l.proxy is not None],
            nodes=list(self.cluster.nodes),
            regions=sorted({n.region for n in self.cluster.nodes.values()}),
            kinds=kinds, **kwargs)

    def apply(self, fault: ScheduledFault) -> None:
        if fault.kind in ("latency", "blackhole", "reset", "bandwidth"):
            self.link_fault(fault.target, fault.kind, fault.duration_s, **fault.params)
        elif fault.kind == "pause":
            self.pause(fault.target, fault.duration_s)
        elif fault.kind == "kill":
            self.kill(fault.target, down_for_s=fault.duration_s)
        elif fault.kind == "stop":
            self.stop(fault.target, down_for_s=fault.duration_s)
        elif fault.kind == "isolate-region":
            self.isolate_region(fault.target, fault.duration_s)
        elif fault.kind == "packet-loss":
            self.packet_loss(fault.target, fault.params.get("probability", 0.1), fault.duration_s)
        else:
            raise FaultError(f"unknown scheduled fault kind {fault.kind!r}")

    def run_schedule(self, schedule: FaultSchedule, wait: bool = False) -> threading.Thread:
        """Applies ``schedule`` on a background thread (``wait=True``: blocks until
        the last fault is applied). Saved to ``chaos/schedule-<seed>.json``."""
        self.cluster.save_json(f"chaos/schedule-{schedule.seed}.json",
                               {**schedule.to_json(), "fingerprint": schedule.fingerprint()})
        self._schedule_stop.clear()

        def run() -> None:
            start = time.monotonic()
            for fault in schedule.faults:
                if self._schedule_stop.wait(max(0.0, start + fault.at_s - time.monotonic())):
                    return
                try:
                    self.apply(fault)
                except Exception as error:  # e.g. pausing a node that is down
                    self._record("schedule_error", fault=fault.to_json(), error=str(error))

        thread = threading.Thread(target=run, name="omnirelay-chaos-schedule", daemon=True)
        self._schedule_thread = thread
        thread.start()
        if wait:
            thread.join()
        return thread

    # -- healing -------------------------------------------------------------------------------
    def heal_all(self) -> None:
        """Removes every active fault now: stops schedules, resumes paused
        nodes, clears proxies (restarts scheduled by kill/stop are cancelled)."""
        self._schedule_stop.set()
        if self._schedule_thread is not None:
            self._schedule_thread.join(timeout=5)
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        for node in self.cluster.nodes.values():
            if node.paused:
                node.resume()
        for handle in self.cluster.links.values():
            if handle.proxy is not None and handle.proxy._server is not None:
                handle.proxy.clear()
        if self.cluster.netns is not None and not self.cluster.netns.destroyed:
            self._end_loss(list(self.cluster.netns.rules), "heal_all")
        self._record("heal_all")
