"""Network namespaces for a cluster, and real packet loss inside them.

A TCP fault proxy can delay, cut or throttle a stream but cannot drop a
packet without corrupting it. Real loss needs the kernel: every node (or every
region) of a topology with ``netns`` runs in its own network namespace, wired
to one bridge in the root namespace by a veth pair, and
:meth:`NetnsLab.add_loss` installs iptables' ``statistic`` match
(``-m statistic --mode random --probability P -j DROP``) on the namespace's
side of its veth. TCP then retransmits and calls slow down, as on a lossy
WAN link. (``tc netem`` is not available on every machine this runs on;
namespaces and iptables are, as root.)

Layout of one lab (``prefix`` is unique per lab, e.g. ``ornk3x9a``)::

    root namespace:  bridge <prefix>b  10.A.B.1/24   (fault proxies listen here)
                     veth   <prefix>v<i> ---- eth0 in namespace <prefix>-<key>  10.A.B.(i+2)/24

Nodes in a namespace bind their ports on the namespace's address; nodes of
the topology left in the root namespace bind on the bridge's address, so every
node reaches every other one, and the harness (root namespace) reaches all.

Leftovers are a defect: each lab writes ``/run/omnirelay-netns/<prefix>.json``
(owner pid and its start time) *before* creating anything, removes
everything on :meth:`destroy` (cluster stop, ``atexit``, and the harness
reaper's SIGTERM/SIGHUP handler after the nodes are stopped), and every new
lab first sweeps the labs whose owner process is gone (a harness killed with
``kill -9`` leaves its namespaces behind; the next run removes them), plus
any namespace or interface with the ``orn`` prefix that no live lab owns.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

#: Every lab's names start with this; the sweep recognises leftovers by it.
NAME_PREFIX = "orn"
#: Where labs register themselves (tmpfs: gone after a reboot, like namespaces).
REGISTRY = Path(os.environ.get("OMNIRELAY_NETNS_REGISTRY", "/run/omnirelay-netns"))
#: The in-namespace interface name.
INNER_IF = "eth0"
#: Comment on every loss rule, so removal and listing find exactly ours.
RULE_COMMENT = "omnirelay-loss"
MODES = ("node", "region")
_PREFIX_RE = re.compile(NAME_PREFIX + r"[a-z0-9]{5}")
DIRECTIONS = ("both", "in", "out")

_LABS: "Dict[str, NetnsLab]" = {}
_LABS_LOCK = threading.Lock()
_ATEXIT = False


class NetnsError(RuntimeError):
    """A namespace, interface or iptables command failed (the message carries its stderr)."""


def available() -> Optional[str]:
    """None when namespaces can be made here, else why not (not root, no ip/iptables)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, iptables: scripts/install-deps.sh)"
    return None


def _run(argv: Sequence[str], check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def _start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a pid's
    owner from a later process that reused the number."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:40] or "x"


@dataclass
class LossRule:
    """One installed loss rule set (INPUT and/or OUTPUT) in one namespace."""
    namespace: str
    probability: float
    direction: str
    tag: str
    installed_at: float = field(default_factory=time.time)

    def specs(self) -> List[List[str]]:
        probability = f"{self.probability:.6f}"
        common = ["-m", "statistic", "--mode", "random", "--probability", probability,
                  "-m", "comment", "--comment", f"{RULE_COMMENT}:{self.tag}", "-j", "DROP"]
        out = []
        if self.direction in ("both", "in"):
            out.append(["INPUT", "-i", INNER_IF, *common])
        if self.direction in ("both", "out"):
            out.append(["OUTPUT", "-o", INNER_IF, *common])
        return out


class NetnsLab:
    """The namespaces, veths and bridge of one cluster run (see module docstring).

    ``add(key)`` makes one namespace (key = node name or region) and returns its
    address; ``exec_argv(key, argv)`` wraps a command to run inside it;
    ``add_loss`` / ``remove_loss`` install and remove iptables loss rules;
    ``destroy()`` removes everything (idempotent)."""

    def __init__(self, prefix: Optional[str] = None, subnet: Optional[str] = None) -> None:
        problem = available()
        if problem:
            raise NetnsError(problem)
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix or NAME_PREFIX + "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                                      for _ in range(5))
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise NetnsError(f"netns prefix {self.prefix!r}: {NAME_PREFIX} and 5 of [a-z0-9] "
                             "(interface names are at most 15 characters)")
        self.bridge = f"{self.prefix}b"
        self.namespaces: Dict[str, str] = {}   # key -> namespace name
        self.addresses: Dict[str, str] = {}    # key -> address inside it
        self.rules: List[LossRule] = []
        self._lock = threading.RLock()
        self._destroyed = False
        with _registry_lock():
            sweep()
            self.network = ipaddress.ip_network(subnet) if subnet else _free_subnet()
            hosts = list(self.network.hosts())
            self.gateway = str(hosts[0])
            self._free_hosts = [str(h) for h in hosts[1:]]
            self._write_registry()
            with _LABS_LOCK:
                _LABS[self.prefix] = self
            _install_atexit()
            try:
                _run(["ip", "link", "add", self.bridge, "type", "bridge"])
                _run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge])
                _run(["ip", "link", "set", self.bridge, "up"])
            except BaseException:
                self.destroy()
                raise

    # -- registry -----------------------------------------------------------------------
    @property
    def registry_file(self) -> Path:
        return REGISTRY / f"{self.prefix}.json"

    def _write_registry(self) -> None:
        data = {"prefix": self.prefix, "pid": os.getpid(), "startTime": _start_time(os.getpid()),
                "subnet": str(self.network), "bridge": self.bridge,
                "namespaces": sorted(self.namespaces.values())}
        tmp = self.registry_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.registry_file)

    # -- namespaces ---------------------------------------------------------------------
    def namespace(self, key: str) -> str:
        try:
            return self.namespaces[key]
        except KeyError:
            raise KeyError(f"no namespace for {key!r} in lab {self.prefix} (has {sorted(self.namespaces)})") \
                from None

    def add(self, key: str) -> str:
        """Creates the namespace for ``key`` (idempotent) and returns its address."""
        with self._lock:
            if key in self.namespaces:
                return self.addresses[key]
            if self._destroyed:
                raise NetnsError(f"lab {self.prefix} is destroyed")
            if not self._free_hosts:
                raise NetnsError(f"lab {self.prefix}: subnet {self.network} is full")
            index = len(self.namespaces)
            name = f"{self.prefix}-{_safe_key(key)}"
            outer = f"{self.prefix}v{index}"
            address = self._free_hosts.pop(0)
            self.namespaces[key] = name
            self.addresses[key] = address
            self._write_registry()  # before creating: a crash in between is still swept
            _run(["ip", "netns", "add", name])
            _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", INNER_IF, "netns", name])
            _run(["ip", "link", "set", outer, "master", self.bridge, "up"])
            _run(["ip", "-n", name, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", INNER_IF])
            _run(["ip", "-n", name, "link", "set", INNER_IF, "up"])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
            _run(["ip", "-n", name, "route", "add", "default", "via", self.gateway])
            return address

    def exec_argv(self, key: str, argv: Sequence[str]) -> List[str]:
        """``argv`` run inside ``key``'s namespace (``ip netns exec`` execs in
        place: same pid, so signals and the parent-death signal reach the node)."""
        return ["ip", "netns", "exec", self.namespace(key), *argv]

    def run_in(self, key: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.exec_argv(key, argv), check=check)

    # -- packet loss --------------------------------------------------------------------
    def add_loss(self, key: str, probability: float, direction: str = "both", tag: str = "") -> LossRule:
        """Drops each packet crossing ``key``'s namespace boundary with
        ``probability`` (``in``: arriving, ``out``: leaving, ``both``)."""
        if not 0.0 < float(probability) <= 1.0:
            raise ValueError(f"loss probability must be within (0, 1], got {probability}")
        if direction not in DIRECTIONS:
            raise ValueError(f"loss direction {direction!r}: one of {', '.join(DIRECTIONS)}")
        rule = LossRule(self.namespace(key), float(probability), direction, tag or f"r{len(self.rules)}")
        with self._lock:
            installed: List[List[str]] = []
            try:
                for spec in rule.specs():
                    _run(["ip", "netns", "exec", rule.namespace, "iptables", "-w", "5", "-I", *spec])
                    installed.append(spec)
            except BaseException:
                for spec in installed:
                    _run(["ip", "netns", "exec", rule.namespace, "iptables", "-w", "5", "-D", *spec], check=False)
                raise
            self.rules.append(rule)
        return rule

    def remove_loss(self, rule: LossRule) -> bool:
        """Removes ``rule`` (False when it was already gone)."""
        with self._lock:
            if rule not in self.rules:
                return False
            self.rules.remove(rule)
            if self._destroyed:
                return True
            for spec in rule.specs():
                _run(["ip", "netns", "exec", rule.namespace, "iptables", "-w", "5", "-D", *spec], check=False)
            return True

    def clear_loss(self) -> int:
        with self._lock:
            rules = list(self.rules)
        return sum(1 for r in rules if self.remove_loss(r))

    def loss_rules_installed(self, key: str) -> List[str]:
        """The loss rules iptables shows in ``key``'s namespace (``iptables -S``
        lines carrying our comment): what the kernel has, not what we think."""
        out = self.run_in(key, ["iptables", "-w", "5", "-S"]).stdout
        return [line for line in out.splitlines() if RULE_COMMENT in line]

    def tcp_counters(self, key: str) -> Dict[str, int]:
        """``Tcp:`` counters of ``key``'s namespace (/proc/net/snmp is per
        namespace): ``OutSegs``, ``RetransSegs``, ``InSegs``..."""
        text = self.run_in(key, ["cat", "/proc/net/snmp"]).stdout
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
        return {name: int(value) for name, value in zip(rows[0], rows[1])}

    # -- teardown -----------------------------------------------------------------------
    def destroy(self) -> None:
        """Removes every namespace (their veths and rules go with them), the
        bridge and the registry entry. Idempotent; never raises."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            self.rules.clear()
            names = list(self.namespaces.values())
        _remove(self.bridge, names)
        try:
            self.registry_file.unlink()
        except FileNotFoundError:
            pass
        with _LABS_LOCK:
            _LABS.pop(self.prefix, None)

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    def to_json(self) -> Dict[str, Any]:
        return {"prefix": self.prefix, "subnet": str(self.network), "gateway": self.gateway,
                "bridge": self.bridge, "namespaces": dict(self.namespaces), "addresses": dict(self.addresses),
                "lossRules": [{"namespace": r.namespace, "probability": r.probability, "direction": r.direction,
                               "tag": r.tag} for r in self.rules]}


# -- module-level housekeeping ------------------------------------------------------------

class _registry_lock:
    """An exclusive flock on the registry while a lab sweeps and picks its subnet."""

    def __enter__(self) -> None:
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(REGISTRY / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _remove(bridge: str, namespaces: Iterable[str]) -> None:
    for name in namespaces:
        _run(["ip", "netns", "del", name], check=False)
    _run(["ip", "link", "del", bridge], check=False)


def _live_registry() -> Dict[str, Dict[str, Any]]:
    """Registry entries whose owner process still runs (dead ones are left to sweep)."""
    out = {}
    for path in REGISTRY.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = int(data.get("pid", 0))
        if pid and _start_time(pid) is not None and _start_time(pid) == data.get("startTime"):
            out[data["prefix"]] = data
    return out


def sweep() -> List[str]:
    """Removes the labs whose owner process is gone, and every ``orn*``
    namespace or interface no live lab owns; returns what it removed.
    Call under the registry lock (a new lab does)."""
    removed: List[str] = []
    live = _live_registry()
    for path in REGISTRY.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if data.get("prefix") in live:
            continue
        _remove(data.get("bridge", ""), data.get("namespaces", []))
        removed.append(data.get("prefix", path.stem))
        path.unlink(missing_ok=True)
    owned = set(live)
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"({_PREFIX_RE.pattern})-.+", name)
        if m and m.group(1) not in owned:
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        ifname = parts[1].strip().split("@")[0]
        m = re.fullmatch(rf"({_PREFIX_RE.pattern})(b|v\d+)", ifname)
        if m and m.group(1) not in owned:
            _run(["ip", "link", "del", ifname], check=False)
            removed.append(ifname)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no interface here and no live lab uses."""
    used: List[ipaddress.IPv4Network] = []
    for line in _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            used.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _run(["ip", "-4", "route", "show"], check=False).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if "/" in first:
            used.append(ipaddress.ip_network(first, strict=False))
    for data in _live_registry().values():
        used.append(ipaddress.ip_network(data["subnet"]))
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{rng.randint(200, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NetnsError("no free 10.x.y.0/24 subnet for the namespaces")


def _destroy_all() -> None:
    with _LABS_LOCK:
        labs = list(_LABS.values())
    for lab in labs:
        lab.destroy()


def _install_atexit() -> None:
    global _ATEXIT
    if not _ATEXIT:
        _ATEXIT = True
        atexit.register(_destroy_all)
        # The harness's reaper also runs on SIGTERM/SIGHUP (where atexit does
        # not): it stops the nodes, then this removes their namespaces.
        from omnirelay.harness import process as proc

        proc.after_reap(_destroy_all)


# -- UDP loss probe ------------------------------------------------------------------------

_ECHO_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
s.settimeout(120)
try:
    while True:
        data, peer = s.recvfrom(2048)
        try:
            s.sendto(data, peer)
        except PermissionError:  # the OUTPUT loss rule refuses a local send
            pass
except socket.timeout:
    pass
"""


def measure_udp_loss(lab: NetnsLab, key: str, count: int = 400, gap_s: float = 0.001,
                     settle_s: float = 0.5) -> Dict[str, Any]:
    """Round-trip UDP loss between the root namespace and ``key``'s namespace:
    a UDP echo process runs inside it, ``count`` numbered datagrams are sent
    from here (``gap_s`` apart) and the echoes counted. With a loss rule of
    probability p on both directions the expected loss is 1 - (1 - p)^2."""
    from omnirelay.harness import process as proc

    server = proc.spawn(lab.exec_argv(key, [sys.executable, "-c", _ECHO_SERVER, lab.addresses[key]]),
                        stdout=subprocess.PIPE)
    try:
        line = server.stdout.readline().strip()
        if not line:
            raise NetnsError(f"UDP echo in {lab.namespace(key)} did not start")
        port = int(line)
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        seen = set()
        try:
            def drain() -> None:
                while True:
                    try:
                        data = sock.recv(2048)
                    except BlockingIOError:
                        return
                    seen.add(int(data))
            for i in range(count):
                sock.sendto(str(i).encode(), (lab.addresses[key], port))
                drain()
                time.sleep(gap_s)
            deadline = time.monotonic() + settle_s
            while time.monotonic() < deadline:
                drain()
                time.sleep(0.01)
        finally:
            sock.close()
        received = len(seen)
        return {"sent": count, "received": received, "lossRatio": round(1 - received / count, 4)}
    finally:
        proc.terminate(server, 2.0)
        if server.stdout is not None:
            server.stdout.close()


__all__ = ["DIRECTIONS", "LossRule", "MODES", "NAME_PREFIX", "NetnsError", "NetnsLab", "REGISTRY", "available",
           "measure_udp_loss", "sweep"]
