"""Cluster shapes: a declarative YAML format (``topologies/*.yaml``) and Python
builders that produce the same :class:`Topology` objects.

A topology names nodes (role, region, zone, labels, a config template, a
restart policy, the command that launches them) and links between nodes (a
link says "``source`` talks to ``target``'s named port"; with ``proxy: true``
the harness puts a fault proxy on it). The harness (:mod:`omnirelay.harness`)
starts it; nothing here starts processes.

YAML shape (every key but ``nodes[].name`` is optional; see docs/harness.md)::

    name: three-node
    description: ...
    defaults:                 # merged under every node
      restart: {policy: "no", maxRestarts: 3}
      ready: {readyFile: true, http: /readyz, timeout: 20}
    nodes:
      - name: backend-1
        role: echo
        region: east
        zone: east-a
        labels: {tier: backend}
        ports: [grpc]         # named ports the harness allocates (admin always)
        config: {...}         # template, placeholders resolved, written to a file
        command: null         # default: the omnirelay-native binary
        args: [...]           # default: serve --name ... (see DEFAULT_ARGS)
        env: {KEY: value}
    links:
      - {from: gateway, to: backend-1, port: grpc, proxy: true}
    netns: node               # optional: node | region | off; network namespaces (real packet loss)

Placeholders (``${...}``) inside ``config``, ``args`` and ``env``:

==========================  ===============================================
``${self.name}``            node name (also ``role``, ``region``, ``zone``)
``${self.PORT}``            ``host:port`` of this node's named port
``${self.PORT.port}``       the port number only (``.host`` the host)
``${self.ready_file}``      path of the ready file the harness waits for
``${self.config_file}``     path of the rendered config file
``${self.dir}``             the node's artifacts directory
``${self.labels.KEY}``      a label value
``${nodes.NAME.PORT}``      another node's port; if a proxied link
                            ``self -> NAME`` on ``PORT`` exists, the proxy's
                            listen address instead (so configs need not
                            change when a link is proxied)
``${direct.NAME.PORT}``     another node's port, never through a proxy
``${links.LINK}``           the address to use for link ``LINK``
``${all.ROLE.PORT}``        as a whole list element: expands to one element
                            per node of that role (``*`` = every node), each
                            resolved like ``${nodes.NAME.PORT}``
``${topology.name}``        topology name
``${python}``               the Python interpreter running the harness (for Python nodes)
``${env.VAR}``              an environment variable of the harness
==========================  ===============================================
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import yaml

PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Launch arguments of a node that gives none: today's ``omnirelay-native serve``.
DEFAULT_ARGS: List[str] = [
    "serve",
    "--name", "${self.name}",
    "--admin-address", "${self.admin}",
    "--ready-file", "${self.ready_file}",
]
#: Appended to DEFAULT_ARGS when the node has a ``config``.
DEFAULT_CONFIG_ARGS: List[str] = ["--config", "${self.config_file}"]

RESTART_POLICIES = ("no", "on-failure", "always")


class TopologyError(ValueError):
    """A topology that cannot be run; the message names the offending field."""


@dataclass
class RestartPolicy:
    policy: str = "no"          # no | on-failure | always
    max_restarts: int = 3       # bounded: a crash loop stops after this many
    backoff_s: float = 0.5

    def to_dict(self) -> Dict[str, Any]:
        return {"policy": self.policy, "maxRestarts": self.max_restarts, "backoff": self.backoff_s}


@dataclass
class ReadySpec:
    """Wait strategy: every enabled check must pass within ``timeout_s``."""

    ready_file: bool = True
    http: Optional[str] = "/readyz"   # GET on the admin port must return 200
    log_line: Optional[str] = None    # regex looked for in stdout/stderr
    ports: List[str] = field(default_factory=list)  # named ports that must accept TCP
    timeout_s: float = 20.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "readyFile": self.ready_file,
            "http": self.http,
            "logLine": self.log_line,
            "ports": list(self.ports),
            "timeout": self.timeout_s,
        }


@dataclass
class NodeSpec:
    name: str
    role: str = "node"
    region: str = "local"
    zone: str = ""
    labels: Dict[str, str] = field(default_factory=dict)
    ports: List[str] = field(default_factory=lambda: ["admin"])
    config: Optional[Dict[str, Any]] = None
    command: Optional[str] = None      # executable; None = omnirelay-native
    args: Optional[List[str]] = None   # None = DEFAULT_ARGS (+ DEFAULT_CONFIG_ARGS)
    env: Dict[str, str] = field(default_factory=dict)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    ready: ReadySpec = field(default_factory=ReadySpec)
    #: With a topology ``netns`` mode: False keeps this node in the root
    #: namespace (it binds on the bridge address); None/True = the topology's mode.
    netns: Optional[bool] = None

    # -- builder style (Testcontainers' with_*) -------------------------------
    def with_role(self, role: str) -> "NodeSpec":
        self.role = role
        return self

    def with_region(self, region: str, zone: str = "") -> "NodeSpec":
        self.region, self.zone = region, zone or self.zone
        return self

    def with_label(self, key: str, value: str) -> "NodeSpec":
        self.labels[key] = str(value)
        return self

    def with_port(self, *names: str) -> "NodeSpec":
        for name in names:
            if name not in self.ports:
                self.ports.append(name)
        return self

    def with_config(self, config: Dict[str, Any]) -> "NodeSpec":
        self.config = copy.deepcopy(config)
        return self

    def with_command(self, command: Optional[str], args: Optional[Sequence[str]] = None) -> "NodeSpec":
        self.command = command
        self.args = None if args is None else [str(a) for a in args]
        return self

    def with_args(self, args: Sequence[str]) -> "NodeSpec":
        self.args = [str(a) for a in args]
        return self

    def with_env(self, **env: str) -> "NodeSpec":
        self.env.update({k: str(v) for k, v in env.items()})
        return self

    def with_restart(self, policy: str, max_restarts: int = 3, backoff_s: float = 0.5) -> "NodeSpec":
        self.restart = RestartPolicy(policy, max_restarts, backoff_s)
        return self

    def with_ready(self, **kwargs: Any) -> "NodeSpec":
        for key, value in kwargs.items():
            if not hasattr(self.ready, key):
                raise TopologyError(f"nodes.{self.name}.ready: unknown key {key!r}")
            setattr(self.ready, key, value)
        return self

    def launch_args(self) -> List[str]:
        if self.args is not None:
            return list(self.args)
        return DEFAULT_ARGS + (DEFAULT_CONFIG_ARGS if self.config is not None else [])

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "region": self.region,
            "zone": self.zone,
            "labels": dict(self.labels),
            "ports": list(self.ports),
            "restart": self.restart.to_dict(),
            "ready": self.ready.to_dict(),
        }
        if self.config is not None:
            out["config"] = copy.deepcopy(self.config)
        if self.command is not None:
            out["command"] = self.command
        if self.args is not None:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = dict(self.env)
        if self.netns is not None:
            out["netns"] = self.netns
        return out


@dataclass
class LinkSpec:
    source: str
    target: str
    port: str = "grpc"
    proxy: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.source}->{self.target}" + ("" if self.port == "grpc" else f":{self.port}")

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "from": self.source, "to": self.target, "port": self.port, "proxy": self.proxy}


@dataclass
class Topology:
    name: str
    description: str = ""
    nodes: List[NodeSpec] = field(default_factory=list)
    links: List[LinkSpec] = field(default_factory=list)
    source: Optional[Path] = None
    #: ``mtls``: every omnirelay node gets a certificate from one short-lived
    #: test CA and requires client certificates (docs/security.md).
    tls: Optional[str] = None
    #: ``node``: every node in its own network namespace; ``region``: one per
    #: region (omnirelay.chaos.netns; real packet loss, docs/harness.md).
    netns: Optional[str] = None

    # -- lookups ---------------------------------------------------------------
    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"topology {self.name!r} has no node {name!r}")

    def link(self, name: str) -> LinkSpec:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(f"topology {self.name!r} has no link {name!r}")

    def nodes_with(self, role: Optional[str] = None, region: Optional[str] = None,
                   **labels: str) -> List[NodeSpec]:
        return [
            n for n in self.nodes
            if (role in (None, "*") or n.role == role)
            and (region is None or n.region == region)
            and all(n.labels.get(k) == v for k, v in labels.items())
        ]

    @property
    def regions(self) -> List[str]:
        return sorted({n.region for n in self.nodes})

    def start_order(self) -> List[NodeSpec]:
        """Link targets before their sources (a depth-first topological sort;
        cycles fall back to declaration order)."""
        deps: Dict[str, List[str]] = {n.name: [] for n in self.nodes}
        for link in self.links:
            if link.target != link.source:
                deps[link.source].append(link.target)
        order: List[str] = []
        state: Dict[str, int] = {}

        def visit(name: str) -> None:
            if state.get(name) == 2 or state.get(name) == 1:
                return  # done, or a cycle: keep declaration order
            state[name] = 1
            for dep in deps[name]:
                visit(dep)
            state[name] = 2
            order.append(name)

        for node in self.nodes:
            visit(node.name)
        return [self.node(name) for name in order]

    # -- validation --------------------------------------------------------------
    def validate(self) -> "Topology":
        if not self.name or not NAME_RE.match(self.name):
            raise TopologyError(f"name: {self.name!r} is not a valid topology name")
        seen = set()
        for i, node in enumerate(self.nodes):
            where = f"nodes[{i}]"
            if not node.name or not NAME_RE.match(node.name):
                raise TopologyError(f"{where}.name: {node.name!r} is not a valid node name")
            if node.name in seen:
                raise TopologyError(f"{where}.name: duplicate node name {node.name!r}")
            seen.add(node.name)
            if "admin" not in node.ports:
                node.ports.insert(0, "admin")
            if node.restart.policy not in RESTART_POLICIES:
                raise TopologyError(
                    f"{where}.restart.policy: {node.restart.policy!r} is not one of {RESTART_POLICIES}")
            if node.restart.max_restarts < 0:
                raise TopologyError(f"{where}.restart.maxRestarts: must be >= 0")
            if node.ready.timeout_s <= 0:
                raise TopologyError(f"{where}.ready.timeout: must be > 0")
        if not self.nodes:
            raise TopologyError("nodes: a topology needs at least one node")
        link_names = set()
        for i, link in enumerate(self.links):
            where = f"links[{i}]"
            for key, value in (("from", link.source), ("to", link.target)):
                if value not in seen:
                    raise TopologyError(f"{where}.{key}: unknown node {value!r}")
            if link.name in link_names:
                raise TopologyError(f"{where}.name: duplicate link name {link.name!r}")
            link_names.add(link.name)
            self.node(link.target).with_port(link.port)
        # Every ${nodes.X.P} / ${self.P} / ${all.R.P} must name a node; the port
        # it names is added to that node's ports (so templates declare ports).
        for node in self.nodes:
            for text in _strings(node.config, node.launch_args(), node.env):
                for expr in PLACEHOLDER.findall(text):
                    self._register_reference(node, expr.strip())
        return self

    def _register_reference(self, node: NodeSpec, expr: str) -> None:
        parts = expr.split(".")
        where = f"nodes.{node.name}: ${{{expr}}}"
        head = parts[0]
        if head == "self":
            if len(parts) < 2:
                raise TopologyError(f"{where}: expected ${{self.FIELD}}")
            if parts[1] not in _SELF_FIELDS and parts[1] != "labels":
                node.with_port(parts[1])
        elif head in ("nodes", "direct"):
            if len(parts) < 3:
                raise TopologyError(f"{where}: expected ${{{head}.NODE.PORT}}")
            name = parts[1]
            if name not in {n.name for n in self.nodes}:
                raise TopologyError(f"{where}: unknown node {name!r}")
            self.node(name).with_port(parts[2])
        elif head == "all":
            if len(parts) < 3:
                raise TopologyError(f"{where}: expected ${{all.ROLE.PORT}}")
            members = self.nodes_with(role=parts[1])
            if not members:
                raise TopologyError(f"{where}: no node has role {parts[1]!r}")
            for member in members:
                member.with_port(parts[2])
        elif head == "links":
            if len(parts) < 2 or ".".join(parts[1:]) not in {l.name for l in self.links}:
                raise TopologyError(f"{where}: unknown link")
        elif head in ("topology", "env", "seed", "python"):
            pass
        else:
            raise TopologyError(f"{where}: unknown placeholder root {head!r}")

    # -- (de)serialisation -------------------------------------------------------
    def declared_role_map(self) -> Dict[str, Dict[str, Any]]:
        """What the topology declares per node (``roles``, ``region``, ``zone``,
        ``labels``): the golden side of a role-map comparison. Mesh nodes
        declare it in ``omniRelay.mesh``; other nodes from their spec."""
        out: Dict[str, Dict[str, Any]] = {}
        for node in self.nodes:
            mesh = ((node.config or {}).get("omniRelay") or {}).get("mesh") or {}
            out[node.name] = {
                "roles": list(mesh.get("roles", [node.role])),
                "region": mesh.get("region", node.region),
                "zone": mesh.get("zone", node.zone),
                "labels": dict(mesh.get("labels", node.labels)),
            }
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "nodes": [n.to_dict() for n in self.nodes],
            "links": [l.to_dict() for l in self.links],
            **({"tls": self.tls} if self.tls else {}),
            **({"netns": self.netns} if self.netns else {}),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[Path] = None) -> "Topology":
        if not isinstance(data, Mapping):
            raise TopologyError("topology: expected a mapping at the top level")
        known = {"name", "description", "defaults", "nodes", "links", "mesh", "tls", "netns"}
        # ``x-*`` keys are free (YAML anchors shared by nodes, as in compose files).
        unknown = {k for k in data if not str(k).startswith("x-")} - known
        if unknown:
            raise TopologyError(f"topology: unknown key(s) {sorted(unknown)}")
        defaults = data.get("defaults") or {}
        nodes = []
        for i, raw in enumerate(data.get("nodes") or []):
            merged = _deep_merge(defaults, raw or {})
            nodes.append(_node_from_dict(merged, f"nodes[{i}]"))
        links = []
        for i, raw in enumerate(data.get("links") or []):
            links.extend(_links_from_dict(raw, f"links[{i}]", nodes))
        name = data.get("name") or (source.stem if source else "")
        tls = data.get("tls")
        if tls not in (None, "off", "mtls"):
            raise TopologyError(f"topology: tls: unknown mode {tls!r} (off, mtls)")
        topology = cls(str(name), str(data.get("description", "")), nodes, links, source,
                       None if tls == "off" else tls)
        netns = data.get("netns")
        if netns is True:
            netns = "node"
        if netns not in (None, False, "off", "node", "region"):
            raise TopologyError(f"topology: netns: unknown mode {netns!r} (off, node, region)")
        topology.netns = None if netns in (None, False, "off") else netns
        mesh = data.get("mesh")
        if mesh:
            if mesh is True:
                mesh = {}
            if not isinstance(mesh, Mapping):
                raise TopologyError("mesh: expected a mapping (profile, links, proxy) or true")
            unknown_mesh = set(mesh) - {"profile", "links", "proxy"}
            if unknown_mesh:
                raise TopologyError(f"mesh: unknown key(s) {sorted(unknown_mesh)}")
            apply_mesh(topology, profile=str(mesh.get("profile", "test")),
                       links=bool(mesh.get("links", False)), proxy=bool(mesh.get("proxy", True)))
        return topology.validate()

    @classmethod
    def from_yaml(cls, text: str, source: Optional[Path] = None) -> "Topology":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise TopologyError(f"{source or 'topology'}: invalid YAML: {error}") from None
        return cls.from_dict(data or {}, source)

    @classmethod
    def load(cls, name_or_path: Union[str, Path]) -> "Topology":
        """A YAML file path, or a name looked up in the topology directories
        (``$OMNIRELAY_TOPOLOGY_PATH``, then the repository's ``topologies/``),
        or a builder name from :data:`BUILDERS`."""
        path = find_topology_file(name_or_path)
        if path is not None:
            return cls.from_yaml(path.read_text(), path)
        key = str(name_or_path)
        if key in BUILDERS:
            return BUILDERS[key]().build()
        raise TopologyError(
            f"topology {key!r} not found: not a file, not in {[str(d) for d in topology_dirs()]}, "
            f"and not a builder ({', '.join(sorted(BUILDERS))})")


_SELF_FIELDS = {"name", "role", "region", "zone", "ready_file", "config_file", "dir", "host"}


def _strings(*values: Any) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            for k, v in value.items():
                yield from _strings(k, v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from _strings(v)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_NODE_KEYS = {"name", "role", "region", "zone", "labels", "ports", "config", "command", "args", "env",
              "restart", "ready", "netns"}


def _node_from_dict(raw: Mapping[str, Any], where: str) -> NodeSpec:
    unknown = set(raw) - _NODE_KEYS
    if unknown:
        raise TopologyError(f"{where}: unknown key(s) {sorted(unknown)}")
    if "name" not in raw:
        raise TopologyError(f"{where}.name: required")
    restart_raw = raw.get("restart") or {}
    if isinstance(restart_raw, str):
        restart_raw = {"policy": restart_raw}
    ready_raw = raw.get("ready") or {}
    try:
        restart = RestartPolicy(
            policy=str(restart_raw.get("policy", "no")),
            max_restarts=int(restart_raw.get("maxRestarts", 3)),
            backoff_s=float(restart_raw.get("backoff", 0.5)),
        )
        ready = ReadySpec(
            ready_file=bool(ready_raw.get("readyFile", True)),
            http=ready_raw.get("http", "/readyz"),
            log_line=ready_raw.get("logLine"),
            ports=list(ready_raw.get("ports", [])),
            timeout_s=float(ready_raw.get("timeout", 20.0)),
        )
    except (TypeError, ValueError) as error:
        raise TopologyError(f"{where}: {error}") from None
    args = raw.get("args")
    if args is not None and not isinstance(args, list):
        raise TopologyError(f"{where}.args: expected a list")
    ports = ["admin"] + [str(p) for p in raw.get("ports", []) if p != "admin"]
    return NodeSpec(
        name=str(raw["name"]),
        role=str(raw.get("role", "node")),
        region=str(raw.get("region", "local")),
        zone=str(raw.get("zone", "")),
        labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
        ports=ports,
        config=copy.deepcopy(raw.get("config")),
        command=raw.get("command"),
        args=None if args is None else [str(a) for a in args],
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        restart=restart,
        ready=ready,
        netns=None if raw.get("netns") is None else bool(raw.get("netns")),
    )


def _links_from_dict(raw: Mapping[str, Any], where: str, nodes: List[NodeSpec]) -> List[LinkSpec]:
    """One link, or a family: ``to`` may be ``role:ROLE`` (one link per node of
    that role) so fan-out shapes stay one line."""
    unknown = set(raw) - {"name", "from", "to", "port", "proxy"}
    if unknown:
        raise TopologyError(f"{where}: unknown key(s) {sorted(unknown)}")
    for key in ("from", "to"):
        if key not in raw:
            raise TopologyError(f"{where}.{key}: required")

    def expand(value: str) -> List[str]:
        if value.startswith("role:"):
            names = [n.name for n in nodes if n.role == value[5:]]
            if not names:
                raise TopologyError(f"{where}: no node has role {value[5:]!r}")
            return names
        return [value]

    out = []
    sources, targets = expand(str(raw["from"])), expand(str(raw["to"]))
    for source in sources:
        for target in targets:
            if source == target:
                continue
            name = raw.get("name", "") if len(sources) * len(targets) == 1 else ""
            out.append(LinkSpec(source, target, str(raw.get("port", "grpc")), bool(raw.get("proxy", False)),
                                str(name)))
    return out


# -- mesh identity ------------------------------------------------------------------

def _is_serve_node(node: NodeSpec) -> bool:
    return node.command is None and (node.args is None or (node.args and node.args[0] == "serve"))


def mesh_node_config(node: NodeSpec, members: Sequence[str], profile: str = "test") -> Dict[str, Any]:
    """The ``omniRelay`` config that makes ``node`` a mesh member: its gRPC
    listener (gossip runs on it), its identity from the spec (role, region,
    zone, labels), every other member as a seed, and each member's address as
    this node dials it (``${nodes.X.grpc}``: through the fault proxy when the
    link ``node -> X`` is proxied, so chaos acts on gossip)."""
    others = [m for m in members if m != node.name]
    return {"omniRelay": {
        "inbounds": {"grpc": {"address": "${self.grpc}"}},
        "mesh": {
            "nodeId": "${self.name}",
            "clusterName": "${topology.name}",
            "roles": [node.role],
            "region": node.region,
            "zone": node.zone,
            "labels": dict(node.labels),
            "advertiseAddress": "${self.grpc}",
            "seeds": [f"${{nodes.{m}.grpc}}" for m in others],
            "peerAddresses": {m: f"${{nodes.{m}.grpc}}" for m in others},
            "gossip": {"profile": profile},
        },
    }}


def apply_mesh(topology: Topology, profile: str = "test", links: bool = False,
               proxy: bool = True) -> Topology:
    """Makes every ``serve`` node of ``topology`` a mesh member (see
    :func:`mesh_node_config`; a node's own config wins where both set a key).
    ``links=True`` adds a ``grpc`` link for every ordered pair not linked yet
    (proxied unless ``proxy=False``) so partitions and region isolation cut
    gossip exactly as they cut data traffic. Idempotent."""
    members = [n.name for n in topology.nodes if _is_serve_node(n)]
    for node in topology.nodes:
        if node.name not in members:
            continue
        node.with_port("grpc")
        node.config = _deep_merge(mesh_node_config(node, members, profile), node.config or {})
    if links:
        existing = {(l.source, l.target) for l in topology.links if l.port == "grpc"}
        names = {l.name for l in topology.links}
        for a in members:
            for b in members:
                if a != b and (a, b) not in existing:
                    link = LinkSpec(a, b, "grpc", proxy)
                    if link.name in names:
                        link.name = f"{a}->{b}:gossip"
                    topology.links.append(link)
                    names.add(link.name)
    return topology


# -- locating files ---------------------------------------------------------------

def topology_dirs() -> List[Path]:
    import os

    dirs = [Path(p) for p in os.environ.get("OMNIRELAY_TOPOLOGY_PATH", "").split(os.pathsep) if p]
    repo = Path(__file__).resolve().parent.parent.parent
    if (repo / "topologies").is_dir():
        dirs.append(repo / "topologies")
    installed = Path(__file__).resolve().parent / "topologies"
    if installed.is_dir():
        dirs.append(installed)
    if (Path.cwd() / "topologies").is_dir():
        dirs.append(Path.cwd() / "topologies")
    return dirs


def find_topology_file(name_or_path: Union[str, Path]) -> Optional[Path]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    for directory in topology_dirs():
        for suffix in (".yaml", ".yml", ".json"):
            candidate = directory / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    return None


# -- builders ---------------------------------------------------------------------

class TopologyBuilder:
    """Fluent builder: ``TopologyBuilder("x").node("a", role="leader").link("b", "a").build()``."""

    def __init__(self, name: str, description: str = "") -> None:
        self._topology = Topology(name, description)
        self._mesh: Optional[Dict[str, Any]] = None

    def node(self, name: str, role: str = "node", region: str = "local", zone: str = "",
             **kwargs: Any) -> NodeSpec:
        spec = NodeSpec(name=name, role=role, region=region, zone=zone)
        for key, value in kwargs.items():
            if key == "labels":
                spec.labels.update({k: str(v) for k, v in value.items()})
            elif key == "ports":
                spec.with_port(*value)
            elif hasattr(spec, key):
                setattr(spec, key, value)
            else:
                raise TopologyError(f"nodes.{name}: unknown field {key!r}")
        self._topology.nodes.append(spec)
        return spec

    def with_node(self, name: str, role: str = "node", region: str = "local", zone: str = "",
                  **kwargs: Any) -> "TopologyBuilder":
        self.node(name, role, region, zone, **kwargs)
        return self

    def with_link(self, source: str, target: str, port: str = "grpc", proxy: bool = False,
                  name: str = "") -> "TopologyBuilder":
        self._topology.links.append(LinkSpec(source, target, port, proxy, name))
        return self

    def with_mesh(self, names: Sequence[str], port: str = "grpc", proxy: bool = False) -> "TopologyBuilder":
        for a in names:
            for b in names:
                if a != b:
                    self.with_link(a, b, port, proxy)
        return self

    def with_mesh_identity(self, profile: str = "test", links: bool = False,
                           proxy: bool = True) -> "TopologyBuilder":
        """Every serve node becomes a mesh member (:func:`apply_mesh`), applied at build time."""
        self._mesh = {"profile": profile, "links": links, "proxy": proxy}
        return self

    def with_netns(self, mode: str = "node") -> "TopologyBuilder":
        """Runs the nodes in network namespaces (``node``: one each, ``region``:
        one per region), so ``chaos.packet_loss`` can drop real packets."""
        if mode not in ("node", "region"):
            raise TopologyError(f"topology: netns: unknown mode {mode!r} (node, region)")
        self._topology.netns = mode
        return self

    def build(self) -> Topology:
        topology = copy.deepcopy(self._topology)
        if self._mesh is not None:
            apply_mesh(topology, **self._mesh)
        return topology.validate()


def three_node(proxy: bool = True, mesh_profile: str = "test", mesh_links: bool = False) -> TopologyBuilder:
    """Three serve nodes, two regions (node-3 alone in ``west``), every pair
    linked on the admin port (through fault proxies unless ``proxy=False``)."""
    b = TopologyBuilder("three-node", "three nodes in two regions, admin links through fault proxies")
    b.node("node-1", role="node", region="east", zone="east-a")
    b.node("node-2", role="node", region="east", zone="east-b")
    b.node("node-3", role="node", region="west", zone="west-a")
    b.with_mesh(["node-1", "node-2", "node-3"], port="admin", proxy=proxy)
    return b.with_mesh_identity(profile=mesh_profile, links=mesh_links, proxy=proxy)


def global_leader_with_regions(regions: Sequence[str] = ("east", "west"), replicas_per_region: int = 1,
                               proxy: bool = True, mesh_profile: str = "test",
                               mesh_links: bool = True) -> TopologyBuilder:
    """Seed shape ``GlobalLeaderWithRegions``: one global leader, a regional
    leader per region, shard replicas under each regional leader. Every node
    is a mesh member; ``mesh_links`` (default on: this is the region-isolation
    shape) proxies gossip between every pair."""
    b = TopologyBuilder("global-leader-with-regions",
                        f"global leader + {len(regions)} regional leaders + {replicas_per_region} replica(s) each")
    home = regions[0]
    b.node("global-leader", role="global-leader", region=home, zone=f"{home}-a",
           labels={"tier": "global"}, ports=["grpc"])
    for region in regions:
        leader = f"{region}-leader"
        b.node(leader, role="regional-leader", region=region, zone=f"{region}-a",
               labels={"tier": "regional"}, ports=["grpc"])
        b.with_link(leader, "global-leader", "grpc", proxy)
        b.with_link("global-leader", leader, "grpc", proxy)
        for i in range(1, replicas_per_region + 1):
            replica = f"{region}-replica-{i}"
            b.node(replica, role="replica", region=region, zone=f"{region}-{chr(ord('a') + i % 3)}",
                   labels={"tier": "replica", "leader": leader}, ports=["grpc"])
            b.with_link(replica, leader, "grpc", proxy)
            b.with_link(leader, replica, "grpc", proxy)
    return b.with_mesh_identity(profile=mesh_profile, links=mesh_links, proxy=proxy)


def shard_ring(shards: int = 4, replicas: int = 2, proxy: bool = True, mesh_profile: str = "test",
               mesh_links: bool = False) -> TopologyBuilder:
    """Seed shape ``ShardRing``: ``shards`` nodes on a ring, each owning one
    shard and replicating to its next ``replicas - 1`` successors."""
    b = TopologyBuilder("shard-ring", f"{shards} shard owners on a ring, replication factor {replicas}")
    names = [f"shard-{i}" for i in range(shards)]
    for i, name in enumerate(names):
        b.node(name, role="shard", region="local", zone=f"z{i % 3}",
               labels={"shard": str(i), "ring-position": str(i)}, ports=["grpc"])
    for i, name in enumerate(names):
        for step in range(1, max(1, replicas)):
            b.with_link(name, names[(i + step) % shards], "grpc", proxy)
    return b.with_mesh_identity(profile=mesh_profile, links=mesh_links, proxy=proxy)


def edge_fan_out(edges: int = 3, backends: int = 3, proxy: bool = True, mesh_profile: str = "test",
                 mesh_links: bool = False) -> TopologyBuilder:
    """Seed shape ``EdgeFanOut``: edge gateways each fanning out to every backend."""
    b = TopologyBuilder("edge-fan-out", f"{edges} edge gateways fanning out to {backends} backends")
    for i in range(1, backends + 1):
        b.node(f"backend-{i}", role="backend", region="core", zone=f"core-{i}", ports=["grpc"])
    for i in range(1, edges + 1):
        b.node(f"edge-{i}", role="edge", region=f"edge-{i}", ports=["grpc"])
        for j in range(1, backends + 1):
            b.with_link(f"edge-{i}", f"backend-{j}", "grpc", proxy)
    return b.with_mesh_identity(profile=mesh_profile, links=mesh_links, proxy=proxy)


BUILDERS: Dict[str, Callable[[], TopologyBuilder]] = {
    "three-node": three_node,
    "global-leader-with-regions": global_leader_with_regions,
    "shard-ring": shard_ring,
    "edge-fan-out": edge_fan_out,
}

__all__ = [
    "BUILDERS",
    "apply_mesh",
    "mesh_node_config",
    "DEFAULT_ARGS",
    "LinkSpec",
    "NodeSpec",
    "ReadySpec",
    "RestartPolicy",
    "Topology",
    "TopologyBuilder",
    "TopologyError",
    "edge_fan_out",
    "find_topology_file",
    "global_leader_with_regions",
    "shard_ring",
    "three_node",
]
