"""The cluster harness: runs a :class:`~omnirelay.topology.Topology` as real
``omnirelay-native`` processes on 127.0.0.1.

    with Cluster(Topology.load("three-node"), artifacts_dir="artifacts/demo") as cluster:
        node = cluster.node("node-1")
        print(node.admin, node.metrics().value("omnirelay.peer.pool_exhausted", default=0))
        cluster.chaos.pause("node-2", duration_s=2)

``start()``: checks the binary, allocates ports, starts a fault proxy for every
proxied link, renders each node's config/args/env templates, starts the nodes
(link targets first) and waits for each to be ready within its bounded
timeout. ``stop()`` (also on exceptions, Ctrl-C and interpreter exit; the
kernel's death signal covers ``kill -9`` of the harness) takes a final metrics
snapshot, stops nodes in reverse order (SIGTERM, SIGKILL after a grace period)
and the proxies, and leaves the artifacts (layout in docs/harness.md).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import yaml

from omnirelay._native import NativeBinaryNotFound, find_native_binary
from omnirelay.harness import process as proc
from omnirelay.harness.metrics import MetricsSnapshot
from omnirelay.harness.ports import ALLOCATOR, HOST, PortInUse, require_free
from omnirelay.topology import PLACEHOLDER, LinkSpec, NodeSpec, Topology, TopologyError


class HarnessError(RuntimeError):
    """Base class of errors raised while running a cluster."""


class NodeStartError(HarnessError):
    """A node exited (or could not be executed) before becoming ready."""


class ReadinessTimeout(HarnessError):
    """A node did not become ready within its bounded startup timeout."""


def _now() -> float:
    return time.time()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def http_get(url: str, timeout: float = 2.0, context: Any = None,
             headers: Optional[Mapping[str, str]] = None, method: str = "GET") -> Tuple[int, str]:
    """GET ``url``; (status, body). Raises OSError on connection problems/timeouts.
    ``context`` is the ssl.SSLContext for https:// (mTLS clusters); ``headers``
    e.g. the admin bearer token."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except urllib.error.URLError as error:
        reason = error.reason
        raise (reason if isinstance(reason, OSError) else OSError(str(reason))) from None


@dataclass
class LinkHandle:
    spec: LinkSpec
    upstream: str
    proxy: Any = None  # omnirelay.chaos.proxy.FaultProxy when proxied
    tls: bool = False  # the target port speaks TLS (mTLS cluster, omnirelay node)
    ssl_context: Any = None  # the harness's client context when `tls`

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        """What the link's source should dial: the proxy if any, else the target."""
        return self.proxy.address if self.proxy is not None else self.upstream

    def url(self, path: str = "/") -> str:
        """``http(s)://<address><path>``: HTTPS when the target speaks TLS."""
        return f"{'https' if self.tls else 'http'}://{self.address}{path}"


class Node:
    """One node process of a cluster; survives restarts (the handle stays valid)."""

    def __init__(self, cluster: "Cluster", spec: NodeSpec, ports: Dict[str, int]) -> None:
        self.cluster = cluster
        self.spec = spec
        self.ports = ports
        self.dir = cluster.artifacts_dir / "nodes" / spec.name
        self.process: Optional[Any] = None
        self.incarnation = 0
        self.restarts = 0
        self.paused = False
        self.ready_info: Dict[str, Any] = {}
        self._expected_down = True  # not started yet
        # Bumped by every deliberate stop, so a supervisor restart that was
        # backing off when the stop happened knows it is no longer wanted.
        self._stop_generation = 0
        self._lock = threading.RLock()
        self.argv: List[str] = []
        self.env: Dict[str, str] = {}

    # -- identity -----------------------------------------------------------------
    name = property(lambda self: self.spec.name)
    role = property(lambda self: self.spec.role)
    region = property(lambda self: self.spec.region)
    zone = property(lambda self: self.spec.zone)
    labels = property(lambda self: self.spec.labels)

    @property
    def host(self) -> str:
        """The address this node binds and is dialled on: 127.0.0.1, or its
        network namespace's address in a ``netns`` topology (the bridge's
        address for a node kept in the root namespace there)."""
        return self.cluster.host_of(self.spec)

    @property
    def netns(self) -> Optional[str]:
        """The network namespace this node runs in (None: the root namespace)."""
        return self.cluster.namespace_of(self.spec)

    @property
    def netns_key(self) -> Optional[str]:
        """Its key in the cluster's :class:`~omnirelay.chaos.netns.NetnsLab`
        (the node's name, or its region in ``region`` mode)."""
        return self.cluster.netns_key_of(self.spec)

    def address(self, port: str = "grpc") -> str:
        if port not in self.ports:
            raise KeyError(f"node {self.name} has no port {port!r} (has {sorted(self.ports)})")
        return f"{self.host}:{self.ports[port]}"

    @property
    def admin(self) -> str:
        return self.address("admin")

    @property
    def admin_url(self) -> str:
        scheme = "https" if self.cluster.tls_enabled_for(self.spec) else "http"
        return f"{scheme}://{self.admin}"

    def grpc_channel(self, port: str = "grpc"):
        """A gRPC channel to this node: mTLS with the harness certificate when
        the cluster runs under mTLS, plaintext otherwise."""
        return self.cluster.grpc_channel(self.address(port))

    @property
    def endpoints(self) -> Dict[str, str]:
        return {name: f"{self.host}:{port}" for name, port in self.ports.items()}

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def ready_file(self) -> Path:
        return self.dir / "ready.json"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        return f"Node({self.name!r}, role={self.role!r}, region={self.region!r}, pid={self.pid})"

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, wait: bool = True) -> "Node":
        with self._lock:
            if self.is_running():
                raise HarnessError(f"node {self.name} is already running (pid {self.pid})")
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                self.ready_file.unlink()
            except FileNotFoundError:
                pass
            self.incarnation += 1
            stdout = open(self.dir / "stdout.log", "ab")
            stderr = open(self.dir / "stderr.log", "ab")
            try:
                argv = self.argv if self.netns is None else self.cluster.netns.exec_argv(self.netns_key, self.argv)
                self.process = proc.spawn(argv, env=self.env, cwd=str(self.dir), stdout=stdout, stderr=stderr)
            except FileNotFoundError as error:
                raise NodeStartError(f"node {self.name}: cannot execute {self.argv[0]!r}: {error}") from None
            finally:
                stdout.close()
                stderr.close()
            self.paused = False
            self._expected_down = False
            self.cluster.event("node.started", node=self.name, pid=self.pid, incarnation=self.incarnation,
                               argv=self.argv)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: Optional[float] = None) -> "Node":
        """Waits until every check of the node's ready spec passes (bounded)."""
        spec = self.spec.ready
        timeout = float(timeout_s if timeout_s is not None else
                        self.cluster.ready_timeout_s if self.cluster.ready_timeout_s is not None else spec.timeout_s)
        deadline = time.monotonic() + timeout
        pending = []
        last_error = ""
        log_re = re.compile(spec.log_line) if spec.log_line else None
        while True:
            pending = []
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise NodeStartError(
                    f"node {self.name} exited with code {code} before it was ready\n"
                    f"  argv: {' '.join(self.argv)}\n  stderr ({self.dir / 'stderr.log'}):\n"
                    + _indent(_tail(self.dir / "stderr.log")))
            if spec.ready_file:
                try:
                    self.ready_info = json.loads(self.ready_file.read_text())
                except (FileNotFoundError, ValueError) as error:
                    pending.append(f"ready file {self.ready_file}")
                    last_error = str(error)
            if spec.http and not pending:
                try:
                    status, body = self.get(spec.http, timeout=1.0)
                    if status != 200:
                        pending.append(f"GET {spec.http} -> 200")
                        last_error = f"GET {spec.http}: {status} {body[:200]}"
                except OSError as error:
                    pending.append(f"GET {self.admin_url}{spec.http} -> 200")
                    last_error = f"GET {spec.http}: {error}"
            for port_name in spec.ports:
                try:
                    with socket.create_connection((self.host, self.ports[port_name]), timeout=0.5):
                        pass
                except OSError as error:
                    pending.append(f"TCP {port_name} ({self.address(port_name)})")
                    last_error = str(error)
            if log_re is not None:
                text = _tail(self.dir / "stdout.log", 500) + "\n" + _tail(self.dir / "stderr.log", 500)
                if not log_re.search(text):
                    pending.append(f"log line /{spec.log_line}/")
            if not pending:
                self.cluster.event("node.ready", node=self.name, pid=self.pid)
                return self
            if time.monotonic() >= deadline:
                raise ReadinessTimeout(
                    f"node {self.name} (pid {self.pid}) not ready after {timeout:g}s: still waiting for "
                    f"{', '.join(pending)}; last error: {last_error or '-'}\n"
                    f"  stderr ({self.dir / 'stderr.log'}):\n" + _indent(_tail(self.dir / "stderr.log")))
            time.sleep(0.05)

    def stop(self, grace_s: float = 5.0) -> Optional[int]:
        """Graceful stop: SIGTERM (drain), SIGKILL after ``grace_s``. No restart follows."""
        with self._lock:
            self._expected_down = True
            self._stop_generation += 1
            if self.process is None:
                return None
            code = proc.terminate(self.process, grace_s)
            self.paused = False
            self.cluster.event("node.stopped", node=self.name, pid=self.pid, code=code)
            return code

    def kill(self) -> Optional[int]:
        """``kill -9``: a crash. The node's restart policy decides what follows."""
        with self._lock:
            if not self.is_running():
                return None
            self.process.kill()
            code = self.process.wait(timeout=10)
            proc.forget(self.process)
            self.paused = False
            self.cluster.event("node.killed", node=self.name, pid=self.pid, code=code)
            return code

    def pause(self) -> None:
        """SIGSTOP: the node stops answering but keeps its sockets (a hung process)."""
        with self._lock:
            if not self.is_running():
                raise HarnessError(f"cannot pause node {self.name}: not running")
            self.process.send_signal(19)  # SIGSTOP
            # Delivery is asynchronous: wait (bounded) until every thread is stopped,
            # so a request sent after pause() returns cannot be answered.
            deadline = time.monotonic() + 2.0
            while not proc.all_threads_stopped(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            self.paused = True
            self.cluster.event("node.paused", node=self.name, pid=self.pid)

    def resume(self) -> None:
        with self._lock:
            # Cleared before SIGCONT: the node answers queued requests the
            # moment it runs, and whoever sees that answer must not still
            # find the node marked paused.
            was_paused, self.paused = self.paused, False
            if self.is_running():
                self.process.send_signal(18)  # SIGCONT
            if was_paused:
                self.cluster.event("node.resumed", node=self.name, pid=self.pid)

    def restart(self, grace_s: float = 5.0, wait: bool = True) -> "Node":
        self.stop(grace_s)
        self.restarts += 1
        return self.start(wait=wait)

    # -- observation -----------------------------------------------------------------
    def get(self, path: str, timeout: float = 2.0) -> Tuple[int, str]:
        return http_get(self.admin_url + path, timeout, context=self.cluster.ssl_context,
                        headers=self.cluster.admin_headers)

    def post(self, path: str, timeout: float = 2.0) -> Tuple[int, str]:
        """POST to an admin control endpoint, with the cluster's admin token."""
        return http_get(self.admin_url + path, timeout, context=self.cluster.ssl_context,
                        headers=self.cluster.admin_headers, method="POST")

    def get_json(self, path: str, timeout: float = 2.0) -> Any:
        status, body = self.get(path, timeout)
        if status != 200:
            raise HarnessError(f"GET {self.name}{path}: HTTP {status}: {body[:300]}")
        return json.loads(body)

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            return self.get("/healthz", timeout)[0] == 200
        except OSError:
            return False

    def ready(self, timeout: float = 1.0) -> bool:
        try:
            return self.get("/readyz", timeout)[0] == 200
        except OSError:
            return False

    def introspect(self) -> Any:
        return self.get_json("/omnirelay/introspect")

    def metrics_text(self, timeout: float = 3.0) -> str:
        status, body = self.get("/metrics", timeout)
        if status != 200:
            raise HarnessError(f"GET {self.name}/metrics: HTTP {status}")
        return body

    def metrics(self, timeout: float = 3.0) -> MetricsSnapshot:
        return MetricsSnapshot.parse(self.metrics_text(timeout), node=self.name)

    def log_text(self) -> str:
        return (self.dir / "stdout.log").read_text(errors="replace") + \
            (self.dir / "stderr.log").read_text(errors="replace")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (empty)"


class Cluster:
    """A running topology. Use as a context manager, or call start()/stop()."""

    def __init__(self, topology: Union[Topology, str, Path], artifacts_dir: Union[str, Path, None] = None, *,
                 binary: Union[str, Path, None] = None, seed: int = 0, env: Optional[Mapping[str, str]] = None,
                 ready_timeout_s: Optional[float] = None, port_overrides: Optional[Mapping[str, int]] = None,
                 stop_grace_s: float = 5.0, supervise: bool = True, tls: Optional[str] = None) -> None:
        self.topology = topology if isinstance(topology, Topology) else Topology.load(topology)
        # mTLS: the argument, else the topology's `tls`, else $OMNIRELAY_TLS
        # (so any existing scenario or test can be run under mTLS unchanged).
        self.tls = tls or self.topology.tls or os.environ.get("OMNIRELAY_TLS") or None
        if self.tls == "off":
            self.tls = None
        if self.tls not in (None, "mtls"):
            raise HarnessError(f"tls: unknown mode {self.tls!r} (off, mtls)")
        self.pki = None  # omnirelay.harness.pki.TestCa under mTLS, made at start
        self.ssl_context = None
        # Bearer token of every omnirelay node's admin control plane
        # (omniRelay.admin.tokenFile), sent by Node.get/post.
        self.admin_token = secrets.token_hex(32)
        self.admin_headers = {"Authorization": f"Bearer {self.admin_token}"}
        if artifacts_dir is None:
            artifacts_dir = Path("artifacts") / f"{self.topology.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.artifacts_dir = Path(artifacts_dir).resolve()
        self._binary_arg = binary
        self.binary: Optional[Path] = None
        self.seed = seed
        self.extra_env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.port_overrides = dict(port_overrides or {})
        self.stop_grace_s = stop_grace_s
        self.nodes: Dict[str, Node] = {}
        self.links: Dict[str, LinkHandle] = {}
        self._events_lock = threading.Lock()
        self._events_file = None
        self._started = False
        self._stopped = False
        self._supervise = supervise
        self._supervisor: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        self._chaos = None
        #: omnirelay.chaos.netns.NetnsLab of a ``netns`` topology, made at start.
        self.netns = None

    # -- access ---------------------------------------------------------------------
    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"cluster {self.topology.name!r} has no node {name!r} "
                           f"(nodes: {', '.join(self.nodes)})") from None

    def __getitem__(self, name: str) -> Node:
        return self.node(name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def with_role(self, role: str) -> List[Node]:
        return [n for n in self.nodes.values() if n.role == role]

    def in_region(self, region: str) -> List[Node]:
        return [n for n in self.nodes.values() if n.region == region]

    def link(self, name_or_source: str, target: Optional[str] = None, port: Optional[str] = None) -> LinkHandle:
        if target is None:
            try:
                return self.links[name_or_source]
            except KeyError:
                raise KeyError(f"no link {name_or_source!r} (links: {', '.join(self.links)})") from None
        for link in self.links.values():
            if link.spec.source == name_or_source and link.spec.target == target and \
                    (port is None or link.spec.port == port):
                return link
        raise KeyError(f"no link {name_or_source} -> {target}" + (f" on {port}" if port else ""))

    @property
    def chaos(self):  # -> omnirelay.chaos.ChaosController
        if self._chaos is None:
            from omnirelay.chaos.controller import ChaosController

            self._chaos = ChaosController(self, seed=self.seed)
        return self._chaos

    # -- network namespaces (omnirelay.chaos.netns) --------------------------------------
    def netns_key_of(self, spec: NodeSpec) -> Optional[str]:
        if self.topology.netns is None or spec.netns is False:
            return None
        return spec.name if self.topology.netns == "node" else spec.region

    def namespace_of(self, spec: NodeSpec) -> Optional[str]:
        key = self.netns_key_of(spec)
        return None if key is None or self.netns is None else self.netns.namespace(key)

    def host_of(self, spec: NodeSpec) -> str:
        if self.netns is None:
            return HOST
        key = self.netns_key_of(spec)
        return self.netns.gateway if key is None else self.netns.addresses[key]

    @property
    def proxy_host(self) -> str:
        """Where fault proxies listen: 127.0.0.1, or the bridge address (reachable
        from every namespace and from here) in a ``netns`` topology."""
        return self.netns.gateway if self.netns is not None else HOST

    def endpoints(self) -> Dict[str, Any]:
        return {
            "topology": self.topology.name,
            "artifacts": str(self.artifacts_dir),
            "nodes": {
                n.name: {"role": n.role, "region": n.region, "zone": n.zone, "pid": n.pid,
                         "admin": n.admin, "endpoints": n.endpoints, "ready": n.ready_info}
                for n in self.nodes.values()
            },
            "links": {l.name: {"from": l.spec.source, "to": l.spec.target, "port": l.spec.port,
                               "upstream": l.upstream, "address": l.address, "proxied": l.proxy is not None}
                      for l in self.links.values()},
        }

    # -- events ---------------------------------------------------------------------
    def event(self, event_name: str, /, **fields: Any) -> None:
        record = {"ts": _now(), "event": event_name, **fields}
        with self._events_lock:
            if self._events_file is not None:
                self._events_file.write(json.dumps(record, default=str) + "\n")
                self._events_file.flush()

    def events(self) -> List[Dict[str, Any]]:
        path = self.artifacts_dir / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- start ------------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Cluster":
        if self._started:
            raise HarnessError("cluster already started")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _resolve_binary(self) -> Path:
        if self._binary_arg is not None:
            path = Path(self._binary_arg)
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise NativeBinaryNotFound(f"omnirelay-native binary {path} is not an executable file")
            return path
        return find_native_binary()

    def _start(self) -> None:
        needs_native = any(n.command is None for n in self.topology.nodes)
        if needs_native:
            self.binary = self._resolve_binary()  # raises NativeBinaryNotFound with a clear message
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        (self.artifacts_dir / "nodes").mkdir(exist_ok=True)
        self._events_file = open(self.artifacts_dir / "events.jsonl", "a")
        token_file = self.artifacts_dir / "admin-token"
        token_file.write_text(self.admin_token + "\n")
        os.chmod(token_file, 0o600)
        # Admin clients run while the cluster is up (`omnirelay mesh promote`,
        # the leadership helpers, from this process or a child) find the
        # token here; the previous value comes back on stop.
        self._saved_token_env = os.environ.get("OMNIRELAY_ADMIN_TOKEN_FILE")
        os.environ["OMNIRELAY_ADMIN_TOKEN_FILE"] = str(token_file)
        if self.tls == "mtls":
            from omnirelay.harness.pki import TestCa

            self.pki = TestCa(self.artifacts_dir / "pki")
            self.ssl_context = self.pki.client_ssl_context("harness")
        self.event("cluster.starting", topology=self.topology.name, seed=self.seed,
                   binary=str(self.binary) if self.binary else None)

        if self.topology.netns:
            if self.tls:
                raise HarnessError("netns topologies run without mTLS (the test CA's certificates name 127.0.0.1)")
            from omnirelay.chaos.netns import NetnsLab

            self.netns = NetnsLab()
            for node_spec in self.topology.nodes:
                key = self.netns_key_of(node_spec)
                if key is not None:
                    self.netns.add(key)
            self.save_json("netns.json", self.netns.to_json())
            self.event("netns.created", **self.netns.to_json())

        # Ports: overrides first (checked, fail fast), then allocated ones.
        for node_spec in self.topology.nodes:
            ports: Dict[str, int] = {}
            for port_name in node_spec.ports:
                key = f"{node_spec.name}.{port_name}"
                if key in self.port_overrides:
                    port = int(self.port_overrides[key])
                    require_free(port, f"node {node_spec.name} port {port_name}")
                    ports[port_name] = port
                else:
                    ports[port_name] = ALLOCATOR.allocate()
            self.nodes[node_spec.name] = Node(self, node_spec, ports)
        unknown = set(self.port_overrides) - {f"{n}.{p}" for n, node in self.nodes.items() for p in node.ports}
        if unknown:
            raise TopologyError(f"port overrides name unknown node ports: {sorted(unknown)}")

        # Links and their proxies.
        from omnirelay.chaos.proxy import FaultProxy

        for link_spec in self.topology.links:
            target = self.nodes[link_spec.target]
            upstream = target.address(link_spec.port)
            handle = LinkHandle(link_spec, upstream)
            if self.tls_enabled_for(target.spec):
                handle.tls, handle.ssl_context = True, self.ssl_context
            if link_spec.proxy:
                handle.proxy = FaultProxy(link_spec.name, (target.host, target.ports[link_spec.port]),
                                          (self.proxy_host, ALLOCATOR.allocate()), seed=self.seed,
                                          on_event=lambda record: self.event("link." + record.pop("event"),
                                                                             **record)).start()
            self.links[link_spec.name] = handle

        # Render every node's launch command and config.
        for node in self.nodes.values():
            self._render(node)
        self._write_state()

        for spec in self.topology.start_order():
            self.nodes[spec.name].start(wait=True)
        self._write_state()
        self.event("cluster.ready")
        if self._supervise:
            self._supervisor = threading.Thread(target=self._supervise_loop, name="omnirelay-supervisor",
                                                daemon=True)
            self._supervisor.start()

    def _render(self, node: Node) -> None:
        spec = node.spec
        node.dir.mkdir(parents=True, exist_ok=True)
        omnirelay_node = self.is_omnirelay_node(spec)
        if spec.config is not None:
            config = self.resolve(spec.config, node)
            if self.tls_enabled_for(spec):
                _dial_tls(config, self._tls_addresses())
            node.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        args = self.resolve(spec.launch_args(), node)
        if omnirelay_node:
            # The admin control plane is closed; the harness holds the token.
            args += ["--set", f"admin.tokenFile={self.artifacts_dir / 'admin-token'}"]
            if self.tls_enabled_for(spec):
                for key, value in self.pki.node_settings(node.name).items():
                    args += ["--set", f"{key}={value}"]
        elif self.tls_enabled_for(spec):
            args = _sample_tls_args(args, self.pki, node.name, self._tls_addresses())
        command = self.resolve(spec.command, node) if spec.command else str(self.binary)
        node.argv = [command, *[str(a) for a in args]]
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update({k: str(v) for k, v in self.resolve(spec.env, node).items()})
        node.env = env
        (node.dir / "argv.json").write_text(json.dumps(node.argv, indent=2))

    # -- security ---------------------------------------------------------------------
    def is_omnirelay_node(self, spec: NodeSpec) -> bool:
        """A node running an omnirelay node verb (serve, echo) that reads
        omniRelay config; sample verbs (auth, worker, registry) and foreign
        commands are not."""
        if spec.command is not None:
            return False
        args = spec.launch_args()
        return bool(args) and args[0] in ("serve", "echo")

    def is_sample_process(self, spec: NodeSpec) -> bool:
        """A node running a sample verb (auth, worker, registry): it takes
        its certificates as --tls-* flags (cli/tls_flags.h)."""
        if spec.command is not None:
            return False
        args = spec.launch_args()
        return bool(args) and args[0] in SAMPLE_VERBS

    def tls_enabled_for(self, spec: NodeSpec) -> bool:
        return self.tls == "mtls" and (self.is_omnirelay_node(spec) or self.is_sample_process(spec))

    def _tls_addresses(self) -> set:
        """host:port of every port that speaks TLS under mTLS: the omnirelay
        nodes' ports and the fault proxies in front of them."""
        out = set()
        for node in self.nodes.values():
            if self.tls_enabled_for(node.spec):
                out.update(node.address(p) for p in node.ports)
        for link in self.links.values():
            if link.tls and link.proxy is not None:
                out.add(link.proxy.address)
        return out

    def grpc_channel(self, address: str):
        """A gRPC channel to ``address``: mTLS with the harness certificate
        under mTLS, plaintext otherwise."""
        import grpc

        if self.pki is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, self.pki.grpc_credentials("harness"))

    # -- placeholders -------------------------------------------------------------------
    def resolve(self, value: Any, node: Node) -> Any:
        """Resolves ``${...}`` placeholders in ``value`` (recursively) for ``node``."""
        if isinstance(value, str):
            return PLACEHOLDER.sub(lambda m: self._lookup(m.group(1).strip(), node), value)
        if isinstance(value, list):
            out: List[Any] = []
            for item in value:
                if isinstance(item, str):
                    m = PLACEHOLDER.fullmatch(item.strip())
                    if m and m.group(1).strip().startswith("all."):
                        out.extend(self._expand_all(m.group(1).strip(), node))
                        continue
                out.append(self.resolve(item, node))
            return out
        if isinstance(value, dict):
            return {self.resolve(k, node): self.resolve(v, node) for k, v in value.items()}
        return copy.deepcopy(value)

    def _expand_all(self, expr: str, node: Node) -> List[str]:
        _, role, *rest = expr.split(".")
        members = [n for n in self.nodes.values() if role == "*" or n.role == role]
        return [self._lookup(".".join(["nodes", m.name, *rest]), node) for m in members]

    def _lookup(self, expr: str, node: Node) -> str:
        parts = expr.split(".")
        head = parts[0]
        try:
            if head == "self":
                field = parts[1]
                if field in ("name", "role", "region", "zone"):
                    return str(getattr(node, field))
                if field == "ready_file":
                    return str(node.ready_file)
                if field == "config_file":
                    return str(node.config_file)
                if field == "dir":
                    return str(node.dir)
                if field == "host":
                    return node.host
                if field == "labels":
                    return node.labels[parts[2]]
                return _port_form(node.host, node.ports[field], parts[2:])
            if head in ("nodes", "direct"):
                target = self.nodes[parts[1]]
                port_name = parts[2]
                if head == "nodes":
                    for link in self.links.values():
                        s = link.spec
                        if s.source == node.name and s.target == target.name and s.port == port_name \
                                and link.proxy is not None:
                            host, port = link.proxy.listen_address
                            return _port_form(host, port, parts[3:])
                if len(parts) > 3 and parts[3] in ("name", "role", "region", "zone"):
                    return str(getattr(target, parts[3]))
                return _port_form(target.host, target.ports[port_name], parts[3:])
            if head == "links":
                return self.links[".".join(parts[1:])].address
            if head == "topology":
                return self.topology.name
            if head == "seed":
                return str(self.seed)
            if head == "python":
                return sys.executable
            if head == "env":
                return os.environ[parts[1]]
        except (KeyError, IndexError):
            pass
        raise TopologyError(f"nodes.{node.name}: cannot resolve ${{{expr}}}")

    # -- state and artifacts ---------------------------------------------------------------
    def _write_state(self) -> None:
        (self.artifacts_dir / "endpoints.json").write_text(json.dumps(self.endpoints(), indent=2, default=str))
        (self.artifacts_dir / "topology.yaml").write_text(self.topology.to_yaml())

    def snapshot_metrics(self, label: str, nodes: Optional[List[str]] = None,
                         timeout: float = 3.0) -> Dict[str, MetricsSnapshot]:
        """Scrapes /metrics of every running, unpaused node; saves raw text and
        parsed JSON under ``metrics/<label>/``. Nodes that fail to answer are
        recorded in ``errors.json`` and left out of the result."""
        out: Dict[str, MetricsSnapshot] = {}
        errors: Dict[str, str] = {}
        directory = self.artifacts_dir / "metrics" / _safe(label)
        directory.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            if nodes is not None and node.name not in nodes:
                continue
            if not node.is_running() or node.paused:
                errors[node.name] = "not running" if not node.is_running() else "paused"
                continue
            try:
                text = node.metrics_text(timeout)
            except (OSError, HarnessError) as error:
                errors[node.name] = str(error)
                continue
            snap = MetricsSnapshot.parse(text, node=node.name)
            (directory / f"{node.name}.prom").write_text(text)
            (directory / f"{node.name}.json").write_text(json.dumps(snap.to_json(), indent=1))
            out[node.name] = snap
        if errors:
            (directory / "errors.json").write_text(json.dumps(errors, indent=2))
        self.event("metrics.snapshot", label=label, nodes=sorted(out), errors=errors)
        return out

    def save_json(self, relative: str, data: Any) -> Path:
        path = self.artifacts_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        return path

    # -- supervision -------------------------------------------------------------------------
    def _supervise_loop(self) -> None:
        while not self._stop_event.wait(0.2):
            for node in list(self.nodes.values()):
                with node._lock:
                    if node._expected_down or node.process is None or node.process.poll() is None:
                        continue
                    code = node.process.returncode
                    policy = node.spec.restart
                    proc.forget(node.process)
                    wants = policy.policy == "always" or (policy.policy == "on-failure" and code != 0)
                    if not wants or node.restarts >= policy.max_restarts:
                        node._expected_down = True
                        self.event("node.exited", node=node.name, code=code,
                                   restart="no" if not wants else "limit reached")
                        continue
                    node._expected_down = True  # while backing off
                    generation = node._stop_generation
                if self._stop_event.wait(policy.backoff_s):
                    return
                with node._lock:
                    # Someone started it meanwhile, or stopped it on purpose: not ours to restart.
                    if node.is_running() or self._stopped or node._stop_generation != generation:
                        continue
                    node.restarts += 1
                    self.event("node.restarting", node=node.name, code=code, restarts=node.restarts)
                    try:
                        node.start(wait=True)
                    except HarnessError as error:
                        self.event("node.restart_failed", node=node.name, error=str(error))

    # -- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if hasattr(self, "_saved_token_env"):
            if self._saved_token_env is None:
                os.environ.pop("OMNIRELAY_ADMIN_TOKEN_FILE", None)
            else:
                os.environ["OMNIRELAY_ADMIN_TOKEN_FILE"] = self._saved_token_env
        self._stop_event.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        if self._chaos is not None:
            try:
                self._chaos.heal_all()
            except Exception as error:  # teardown goes on
                self.event("chaos.heal_failed", error=str(error))
        for node in self.nodes.values():
            if node.paused:
                node.resume()
        if self.nodes and any(n.is_running() for n in self.nodes.values()):
            try:
                self.snapshot_metrics("final", timeout=2.0)
            except Exception as error:
                self.event("metrics.final_failed", error=str(error))
        for spec in reversed(self.topology.start_order()):
            node = self.nodes.get(spec.name)
            if node is not None:
                node.stop(self.stop_grace_s)
        for link in self.links.values():
            if link.proxy is not None:
                try:
                    link.proxy.stop()
                except Exception:
                    pass
                (self.artifacts_dir / "links").mkdir(exist_ok=True)
                (self.artifacts_dir / "links" / f"{_safe(link.name)}.json").write_text(json.dumps({
                    "stats": vars(link.proxy.stats),
                    "faults": [f.to_json() for f in link.proxy.history],
                }, indent=2))
        if self.netns is not None:
            # After the nodes: a namespace removed under a running node would
            # strand it without a network. Rules and veths go with it.
            self.netns.destroy()
            self.event("netns.destroyed", prefix=self.netns.prefix)
        if self.artifacts_dir.exists() and self.nodes:
            self._write_state()
        self.event("cluster.stopped")
        with self._events_lock:
            if self._events_file is not None:
                self._events_file.close()
                self._events_file = None


def _port_form(host: str, port: int, rest: List[str]) -> str:
    if not rest:
        return f"{host}:{port}"
    if rest[0] == "port":
        return str(port)
    if rest[0] == "host":
        return host
    if rest[0] == "url":
        return f"http://{host}:{port}"
    raise KeyError(rest[0])


SAMPLE_VERBS = ("auth", "worker", "registry")


def _sample_tls_args(args: List[Any], pki: Any, name: str, tls_addresses: set) -> List[Any]:
    """Under mTLS, a sample process (auth, worker, registry) gets its
    certificate from the run's test CA and requires client certificates on
    its listener; a --registry given as a bare host:port of a TLS port
    becomes https:// (the registry client never falls back to plaintext)."""
    out = [str(a) for a in args]
    for i in range(len(out) - 1):
        if out[i] == "--registry" and out[i + 1] in tls_addresses:
            out[i + 1] = f"https://{out[i + 1]}"
    cert, key = pki.issue(name)
    return out + ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-file", str(pki.ca_cert),
                  "--tls-client-cert", "require"]


def _dial_tls(config: Any, tls_addresses: set) -> None:
    """Under mTLS, an omnirelay node's outbound and gateway-cluster endpoints
    given as bare host:port become https:// (TLS with the node's certificate)
    when they point at a port that speaks TLS (another omnirelay node, a
    sample process, or a proxy in front of one). A gateway cluster fed by a
    registry that speaks TLS polls it over https:// and dials its instances
    (sample workers, TLS under mTLS) over TLS."""
    section = config.get("omniRelay") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return

    def https(endpoints: Any) -> Any:
        if not isinstance(endpoints, list):
            return endpoints
        return [f"https://{e}" if isinstance(e, str) and e in tls_addresses else e for e in endpoints]

    for outbound in (section.get("outbounds") or {}).values():
        if isinstance(outbound, dict) and "endpoints" in outbound:
            outbound["endpoints"] = https(outbound["endpoints"])
    gateway = section.get("gateway")
    if isinstance(gateway, dict):
        for cluster in (gateway.get("clusters") or {}).values():
            if isinstance(cluster, dict) and cluster.get("endpoints"):
                cluster["endpoints"] = https(cluster["endpoints"])
            if isinstance(cluster, dict) and cluster.get("registry") in tls_addresses:
                cluster["registry"] = f"https://{cluster['registry']}"
                cluster.setdefault("tls", True)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text.replace("->", "--")).strip("_") or "x"


__all__ = ["Cluster", "HarnessError", "LinkHandle", "Node", "NodeStartError", "PortInUse", "ReadinessTimeout",
           "http_get"]
