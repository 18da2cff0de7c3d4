"""Stack control: docker-compose-style operations on a running cluster.

:class:`StackControl` is what ``omnirelay stack ...`` does, as Python methods a
scenario calls directly::

    from omnirelay.harness.stack import control

    stack = control(cluster)                 # one per cluster (shared lock)
    stack.ps()                               # [{"name", "role", "pod", "state", "pid", ...}]
    stack.stop("role:worker")                # graceful (SIGTERM); stays down
    stack.start("role:worker")               # waits until ready (bounded)
    stack.restart("gateway")
    stack.kill("worker-2")                   # kill -9 by pod_name; the restart policy decides
    stack.kill("worker-2", restart=False)    # kill -9 and keep it down until start()
    stack.reset()                            # every node restarted fresh, state wiped
    stack.wait_workers(3)                    # registry lists them and the gateway refreshed

Targets are node names, ``role:ROLE``, ``pod:POD`` or ``all`` (no target = all).
A node's pod name is its ``pod_name`` label, else its name.

**State.** A node keeps whatever must survive its own restarts under
``<node dir>/state/`` (the session stack's auth node: user store and JWT
secret); :meth:`StackControl.reset` stops every node, deletes those folders and
starts the topology again in start order, so the user store is re-seeded, the
secret re-created and every session binding is gone.

**Control endpoint.** :class:`ControlServer` is the small HTTP server the
``omnirelay up`` process serves on 127.0.0.1 (port 0). Its address and a random
token are written (mode 0600) to ``<artifacts>/control.json`` and
``$OMNIRELAY_STATE_DIR/stack-<topology>.json`` (default ``$XDG_STATE_HOME/omnirelay``), which
``omnirelay stack`` reads; every request must carry the token
(``X-OmniRelay-Token``), so only the user who started the stack controls it.

==========================  ===============================================
``GET /ps``                 ``{"topology", "nodes": [ps rows]}``
``POST /stop`` ``/start``   ``{"targets": [...]}`` → ``{"nodes": [...], "ps"}``
``POST /restart``
``POST /kill``              ``{"pods": [...], "restart": true}``
``POST /reset``             ``{}``
==========================  ===============================================
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import yaml

from omnirelay._core import parse_duration

STATE_FOLDER = "state"
TOKEN_HEADER = "X-OmniRelay-Token"


class StackError(RuntimeError):
    """A control operation named an unknown node/pod, or could not complete."""


def pinned_ports(topology: Any) -> Dict[str, int]:
    """The ``x-ports`` mapping (``{"gateway.grpc": 10000}``) of a topology
    file: the ports ``omnirelay up`` pins by default. Empty for builder
    topologies and files without it."""
    source = getattr(topology, "source", None)
    if source is None:
        return {}
    try:
        data = yaml.safe_load(Path(source).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    raw = data.get("x-ports") or {}
    if not isinstance(raw, Mapping):
        raise StackError(f"{source}: x-ports must map NODE.PORT to a port number")
    return {str(k): int(v) for k, v in raw.items()}


def state_dir() -> Path:
    """``$OMNIRELAY_STATE_DIR``, else the XDG state directory
    (``$XDG_STATE_HOME/omnirelay``, default ``~/.local/state/omnirelay``)."""
    env = os.environ.get("OMNIRELAY_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg.startswith("/") else Path.home() / ".local" / "state"
    return base / "omnirelay"


def _duration_s(text: Any, default: float) -> float:
    """A node-config duration in seconds, read as the C++ loader reads it
    (one parser: ``omnirelay.parse_duration``; a bare number is milliseconds)."""
    if text is None:
        return default
    if isinstance(text, (int, float)):
        return float(text) / 1000.0
    try:
        return parse_duration(str(text).strip()).total_seconds()
    except Exception:  # noqa: BLE001 - the node validated it; fall back like an absent value
        return default


def pod_name(node: Any) -> str:
    return node.labels.get("pod_name") or node.name


class StackControl:
    """Compose-style control of one :class:`~omnirelay.harness.cluster.Cluster`.
    Operations are serialised (one at a time per cluster) and bounded."""

    def __init__(self, cluster: Any, *, ready_timeout_s: float = 30.0) -> None:
        self.cluster = cluster
        self.ready_timeout_s = ready_timeout_s
        self._lock = threading.RLock()
        self._held: set = set()  # stopped through this control: down until start()

    # -- selection ---------------------------------------------------------------------------
    def select(self, *targets: str) -> List[Any]:
        """Nodes named by ``targets`` (name, ``role:R``, ``pod:P``, ``all``), in
        the topology's start order; no target = every node."""
        nodes = [self.cluster.nodes[spec.name] for spec in self.cluster.topology.start_order()]
        if not targets or any(t in ("all", "*") for t in targets):
            return nodes
        chosen = set()
        for target in targets:
            if target.startswith("role:"):
                match = [n for n in nodes if n.role == target[5:]]
            elif target.startswith("pod:"):
                match = [n for n in nodes if pod_name(n) == target[4:]]
            else:
                match = [n for n in nodes if n.name == target] or [n for n in nodes if pod_name(n) == target]
            if not match:
                raise StackError(f"no node matches {target!r} (nodes: {', '.join(n.name for n in nodes)}; "
                                 f"roles: {', '.join(sorted({n.role for n in nodes}))})")
            chosen.update(n.name for n in match)
        return [n for n in nodes if n.name in chosen]

    def node_for_pod(self, pod: str) -> Any:
        for node in self.cluster.nodes.values():
            if pod_name(node) == pod:
                return node
        raise StackError(f"no node has pod_name {pod!r} (pods: "
                         f"{', '.join(pod_name(n) for n in self.cluster.nodes.values())})")

    # -- observation ----------------------------------------------------------------------------
    def _state(self, node: Any) -> str:
        if node.process is None:
            return "created"
        if node.is_running():
            return "paused" if node.paused else "running"
        code = node.process.returncode
        if node.name in self._held:
            return f"stopped ({code})"
        return f"exited ({code})"  # its restart policy may bring it back

    def ps(self) -> List[Dict[str, Any]]:
        """One row per node: name, role, pod, state, pid, restarts, endpoints."""
        rows = []
        for spec in self.cluster.topology.start_order():
            node = self.cluster.nodes[spec.name]
            rows.append({"name": node.name, "role": node.role, "pod": pod_name(node), "state": self._state(node),
                         "pid": node.pid if node.is_running() else None, "restarts": node.restarts,
                         "incarnation": node.incarnation, "endpoints": node.endpoints})
        return rows

    # -- lifecycle --------------------------------------------------------------------------------
    def _parallel(self, fn: Any, nodes: Sequence[Any]) -> None:
        if len(nodes) <= 1:
            for node in nodes:
                fn(node)
            return
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            for future in [pool.submit(fn, n) for n in nodes]:
                future.result()

    def stop(self, *targets: str, grace_s: float = 5.0) -> List[str]:
        """Graceful stop (SIGTERM, SIGKILL after ``grace_s``); no restart follows."""
        with self._lock:
            nodes = self.select(*targets)
            self._held.update(n.name for n in nodes)
            exited = [n for n in nodes if not n.is_running()]
            self._parallel(lambda n: n.stop(grace_s), list(reversed(nodes)))
            self._hold_down(exited, grace_s)
            self.cluster.event("stack.stop", nodes=[n.name for n in nodes])
            return [n.name for n in nodes]

    def _hold_down(self, nodes: Sequence[Any], grace_s: float) -> None:
        """A node that had already exited may be in its restart backoff: the
        supervisor would start it after we stopped it. Stop such a restart
        (bounded by the longest backoff)."""
        if not nodes:
            return
        deadline = time.monotonic() + max(n.spec.restart.backoff_s for n in nodes) + 1.0
        while time.monotonic() < deadline:
            for node in nodes:
                if node.is_running():
                    node.stop(grace_s)
            time.sleep(0.05)

    def start(self, *targets: str, wait: bool = True) -> List[str]:
        """Starts the selected nodes that are not running, in start order, and
        waits (bounded) until each is ready. Running nodes are left alone."""
        with self._lock:
            started = []
            for node in self.select(*targets):
                self._held.discard(node.name)
                with node._lock:
                    if node.is_running():
                        continue
                    node.start(wait=False)
                started.append(node)
            if wait:
                for node in started:
                    node.wait_ready(self.ready_timeout_s)
            self.cluster.event("stack.start", nodes=[n.name for n in started])
            return [n.name for n in started]

    def restart(self, *targets: str, grace_s: float = 5.0) -> List[str]:
        with self._lock:
            names = self.stop(*targets, grace_s=grace_s)
            for node in self.select(*targets):
                node.restarts += 1
            self.start(*targets)
            return names

    def kill(self, *pods: str, restart: bool = True) -> List[str]:
        """``kill -9`` the nodes with these pod names (a crash). With
        ``restart=True`` their restart policy decides what follows (the
        session stack's workers: ``"no"``, they stay down, unless the topology
        opts into ``always``); ``restart=False`` keeps them down until
        :meth:`start` whatever the policy."""
        with self._lock:
            nodes = [self.node_for_pod(p) for p in pods]
            for node in nodes:
                if not restart:
                    node._expected_down = True  # the supervisor leaves it down
                    self._held.add(node.name)
                node.kill()
            self.cluster.event("stack.kill", nodes=[n.name for n in nodes], restart=restart)
            return [n.name for n in nodes]

    def reset(self, wait_workers: bool = True) -> List[Dict[str, Any]]:
        """Back to the initial state: stop every node, delete every node's
        ``state/`` folder (user store, JWT secret), reset restart counters,
        start the topology again in start order. Sessions and sticky bindings
        are gone (workers and gateway are fresh processes)."""
        with self._lock:
            started = time.monotonic()
            if self.cluster._chaos is not None:
                self.cluster.chaos.heal_all()
            nodes = self.select()
            exited = [n for n in nodes if not n.is_running()]
            for node in nodes:
                node._expected_down = True  # no supervisor restart while resetting
            self._parallel(lambda n: n.stop(5.0), nodes)
            self._hold_down(exited, 5.0)
            self._held.clear()
            for node in nodes:
                shutil.rmtree(node.dir / STATE_FOLDER, ignore_errors=True)
                node.restarts = 0
            for node in nodes:
                with node._lock:
                    if not node.is_running():
                        node.start(wait=False)
                node.wait_ready(self.ready_timeout_s)
            if wait_workers and self.registry_node() is not None and self.cluster.with_role("worker"):
                self.wait_workers()
            self.cluster.event("stack.reset", duration_s=round(time.monotonic() - started, 3))
            return self.ps()

    # -- session stack helpers ---------------------------------------------------------------
    def registry_node(self) -> Optional[Any]:
        nodes = self.cluster.with_role("registry")
        return nodes[0] if nodes else None

    def registered(self, role: str = "worker") -> List[str]:
        """Instance ids the registry lists for ``role`` (``[]`` if it does not answer)."""
        from omnirelay.harness.cluster import http_get

        registry = self.registry_node()
        if registry is None or not registry.is_running():
            return []
        try:
            scheme = "https" if self.cluster.tls_enabled_for(registry.spec) else "http"
            status, body = http_get(f"{scheme}://{registry.address('http')}/instances?role={role}", timeout=1.0,
                                    context=self.cluster.ssl_context)
        except OSError:
            return []
        if status != 200:
            return []
        return sorted(entry.get("id", "") for entry in json.loads(body))

    def refresh_interval_s(self) -> float:
        """The gateway's registry refresh interval (from its topology config)."""
        for node in self.cluster.with_role("gateway"):
            config = (node.spec.config or {}).get("omniRelay", {}).get("gateway", {})
            for cluster_cfg in (config.get("clusters") or {}).values():
                if isinstance(cluster_cfg, Mapping) and "registry" in cluster_cfg:
                    return _duration_s(cluster_cfg.get("refreshInterval"), 1.0)
        return 0.0

    def gateway_views(self) -> List[List[str]]:
        """The member ids every running gateway currently routes to, one sorted
        list per registry-fed cluster (from its ``/omnirelay/gateway``)."""
        from omnirelay.harness.cluster import http_get

        views: List[List[str]] = []
        for node in self.cluster.with_role("gateway"):
            if not node.is_running():
                continue
            try:
                status, body = http_get(f"{node.admin_url}/omnirelay/gateway", timeout=1.0,
                                        context=self.cluster.ssl_context)
            except OSError:
                views.append(["<unreachable>"])
                continue
            if status != 200:
                continue  # not a gateway-mode node
            for cluster in json.loads(body).get("clusters", {}).values():
                if cluster.get("source") == "registry":
                    views.append(sorted(m.get("id", "") for m in cluster.get("members", [])))
        return views

    def wait_workers(self, pods: Optional[Iterable[str]] = None, within_s: float = 15.0,
                     role: str = "worker") -> List[str]:
        """Waits (bounded) until the registry lists exactly ``pods`` (default:
        the running workers' pod names) and every gateway's registry-fed
        cluster routes to exactly them (polled, not slept for)."""
        if pods is None:
            pods = [pod_name(n) for n in self.cluster.with_role(role) if n.is_running()]
        want = sorted(pods)
        deadline = time.monotonic() + within_s
        while True:
            have = self.registered(role)
            if have == want:
                break
            if time.monotonic() >= deadline:
                raise StackError(f"registry lists {have} for role {role}, expected {want} after {within_s:g}s")
            time.sleep(0.05)
        # The gateway refreshes on its own interval: poll its view, bounded by
        # a few intervals past the caller's budget.
        deadline = max(deadline, time.monotonic() + 4 * self.refresh_interval_s() + 2.0)
        while True:
            views = self.gateway_views()
            if all(view == want for view in views):
                break
            if time.monotonic() >= deadline:
                raise StackError(f"gateways route to {views}, expected {want}")
            time.sleep(0.05)
        return have


_controls: "weakref.WeakKeyDictionary[Any, StackControl]" = weakref.WeakKeyDictionary()
_controls_lock = threading.Lock()


def control(cluster: Any) -> StackControl:
    """The cluster's :class:`StackControl` (one per cluster, so the control
    endpoint and a scenario share its lock)."""
    with _controls_lock:
        existing = _controls.get(cluster)
        if existing is None:
            existing = _controls[cluster] = StackControl(cluster)
        return existing


# -- the control endpoint ---------------------------------------------------------------------------

class ControlServer:
    """HTTP control endpoint of a running stack (served by ``omnirelay up``)."""

    def __init__(self, cluster: Any, *, host: str = "127.0.0.1", port: int = 0,
                 state_file: Union[str, Path, None] = None) -> None:
        self.cluster = cluster
        self.stack = control(cluster)
        self.token = secrets.token_hex(16)
        self._host, self._port = host, port
        self.state_files: List[Path] = [cluster.artifacts_dir / "control.json",
                                        Path(state_file) if state_file else
                                        state_dir() / f"stack-{cluster.topology.name}.json"]
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ControlServer":
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if secrets.compare_digest(self.headers.get(TOKEN_HEADER, ""), server_self.token):
                    return True
                self._reply(401, {"error": "missing or wrong " + TOKEN_HEADER})
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path.split("?")[0] == "/ps":
                    self._reply(200, {"topology": server_self.cluster.topology.name,
                                      "artifacts": str(server_self.cluster.artifacts_dir),
                                      "nodes": server_self.stack.ps()})
                else:
                    self._reply(404, {"error": f"unknown path {self.path}"})

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                except ValueError:
                    self._reply(400, {"error": "body is not JSON"})
                    return
                self._reply(*server_self.handle(self.path.split("?")[0], body))

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="omnirelay-stack-control",
                                        daemon=True)
        self._thread.start()
        record = {"topology": self.cluster.topology.name, "url": self.url, "token": self.token,
                  "pid": os.getpid(), "artifacts": str(self.cluster.artifacts_dir), "started_at": time.time()}
        for path in self.state_files:
            _write_private(path, record)
        self.cluster.event("stack.control", url=self.url)
        return self

    def handle(self, path: str, body: Mapping[str, Any]) -> "tuple[int, Dict[str, Any]]":
        stack = self.stack
        try:
            targets = [str(t) for t in body.get("targets") or []]
            if path == "/stop":
                names = stack.stop(*targets)
            elif path == "/start":
                names = stack.start(*targets)
            elif path == "/restart":
                names = stack.restart(*targets)
            elif path == "/kill":
                pods = [str(p) for p in body.get("pods") or []]
                if not pods:
                    return 400, {"error": "kill needs at least one pod name"}
                names = stack.kill(*pods, restart=bool(body.get("restart", True)))
            elif path == "/reset":
                started = time.monotonic()
                stack.reset()
                names = [n.name for n in stack.select()]
                return 200, {"nodes": names, "ps": stack.ps(), "duration_s": round(time.monotonic() - started, 3)}
            else:
                return 404, {"error": f"unknown operation {path}"}
        except StackError as error:
            return 404, {"error": str(error)}
        except Exception as error:  # reported to the caller; the stack keeps running
            return 500, {"error": f"{type(error).__name__}: {error}"}
        return 200, {"nodes": names, "ps": stack.ps()}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for path in self.state_files:
            try:
                if json.loads(path.read_text()).get("token") == self.token:
                    path.unlink()
            except (OSError, ValueError):
                pass


def _write_private(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


# -- the client side (``omnirelay stack``) ---------------------------------------------------------

def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError, TypeError):
        return False


def find_control(topology: Optional[str] = None, control_file: Union[str, Path, None] = None) -> Dict[str, Any]:
    """The control record of a running stack: ``control_file``, else
    ``stack-<topology>.json`` in :func:`state_dir`, else the only live one."""
    if control_file is not None:
        return json.loads(Path(control_file).read_text())
    folder = state_dir()
    if topology is not None:
        path = folder / f"stack-{topology}.json"
        if not path.exists():
            raise StackError(f"no running stack {topology!r} ({path} does not exist; start it with "
                             f"`omnirelay up {topology}`)")
        record = json.loads(path.read_text())
        if not _alive(record.get("pid")):
            raise StackError(f"stack {topology!r} is not running (stale {path}: pid {record.get('pid')})")
        return record
    live = []
    for path in sorted(folder.glob("stack-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(record.get("pid")):
            live.append(record)
    if not live:
        raise StackError(f"no running stack found in {folder} (start one with `omnirelay up TOPOLOGY`)")
    if len(live) > 1:
        raise StackError("several stacks are running: pick one with --topology "
                         + " / ".join(r["topology"] for r in live))
    return live[0]


def request(record: Mapping[str, Any], method: str, path: str, body: Optional[Mapping[str, Any]] = None,
            timeout_s: float = 180.0) -> Dict[str, Any]:
    """One call to a control endpoint; raises StackError with its message."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(record["url"] + path, data=data, method=method,
                                 headers={TOKEN_HEADER: record["token"], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", "")
        except ValueError:
            message = ""
        raise StackError(message or f"HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise StackError(f"control endpoint {record['url']} does not answer: {error}") from None


__all__ = ["ControlServer", "STATE_FOLDER", "StackControl", "StackError", "control", "find_control",
           "pinned_ports", "pod_name", "request", "state_dir"]
